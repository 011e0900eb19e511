// Chunkwise WY forward on tensor cores (Mode::fast): spec section 5, Eq. 18-25, chunk C = 64.
//
// Every matrix product runs on bf16 tensor-core operands with fp32 accumulation (mma.sync m16n8k16 with ldmatrix
// operand loads, mma_sync.cuh; sm_80+); gates, cumulative decays, the triangular solve and the state S stay fp32.
// Two kernels with a bf16 workspace between them (allocated stream-ordered per call):
//   1. tc_prepare_kernel, one block per (chunk, key head), every chunk in parallel, d tiles of 32 channels:
//        G = cumsum(g) (fp32), the scores Aqk (Eq. 24) and T (Eq. 19): off-diagonal 16 x 16 blocks on
//        tensor cores from rows prescaled by the two factors exp(G_r - G_i0) and exp(G_i0 - G_s), both <= 1
//        (i0 = first row of r's 16-row block, s < i0 <= r); inside each diagonal block the same again one level
//        down (pivot i0 + 8: the 8 x 8 block of rows i0 + 8.., columns i0..i0 + 7 on tensor cores), and the
//        eight 8 x 8 diagonal blocks in FFMA with the exact decay exp(G_r - G_s), s <= r; A = (I + T)^{-1} by forward substitution (fp32); Y = A Ebar and U = A Z on
//        tensor cores; Qgamma, Ktail (Eq. 24-25) and gamma_C elementwise. exp(-G) alone and exp of a
//        positive argument are never formed, so any decay (g = -50 per token) underflows, never overflows.
//        The scale is folded into Aqk and Qgamma.
//   2. tc_state_kernel, one block per (V tile, value head, sequence), chunks in order, the fp32 master of S
//        in registers (accumulator fragments) and a bf16 operand copy in shared memory: R = U - Y S_0 (Eq. 23),
//        O = Qgamma S_0 + Aqk R (Eq. 24), S_C = Diag(gamma_C) S_0 + Ktail^T R (Eq. 25), each input tile loaded
//        with cp.async two stages before it is needed.
// With a SavedForward (saved_forward.cuh) the workspace, with A, is its buffer, and the state kernel also stores
// the chunk-start states and R for the backward.
// Workspace (bf16 unless noted), K and V padded to KP, VP = multiples of 16: Aqk [BT, H, 64],
// Y, Qgamma, Ktail [BT, H, KP], U [BT, HV, VP], gamma_C fp32 [chunks, H, KP]; at B=4, T=4096, H=HV=16,
// K=V=128 that is ~0.3 GB (the fp32 path: ~0.74 GB).
// Precision: each product operand is rounded to bf16 (unit roundoff 2^-9) once, accumulations are fp32.
// Eligible: bf16 / f16 inputs with K <= 128 (chunk_forward falls back to the fp32 kernels otherwise).
#include <cstdint>
#include <cstdlib>
#include <string>

#include "chunk_forward_tc.cuh"
#include "mma_sync.cuh"
#include "saved_forward.cuh"
#include "tensor_core_common.cuh"

namespace gdr2::cuda::detail {
namespace {
using namespace tc;

constexpr int kDT = 32;          // prepare: channels per d tile
constexpr int kDS = kDT + 1;     // fp32 d-tile row stride (no bank conflicts)
constexpr int kDB = kDT + 8;     // bf16 operand row stride (ldmatrix rows: 16-byte aligned, 8 rows on distinct banks)
constexpr int kZT = 64;          // U: value columns per tile
constexpr int kZB = kZT + 8;

// ---- shared-memory layout of the prepare kernel (bytes) ----------------------------------------------
// d-tile phase: G, q, k, e (fp32 64 x 33 each) and the prescaled bf16 operands Qs, Es (rows 16..63) and
// Ks_I (rows s < 16 I, I = 1, 2, 3, stacked at row offsets 0, 16, 48); for the 8 x 8 blocks inside the
// diagonal blocks Qh, Eh (rows 16 I + 8.. 16 I + 15 at row 8 I) and Kh (rows 16 I .. 16 I + 7 at row 8 I). After the d loop the same region
// holds Aqk then A (fp32), T then A in bf16, the Z tile and the per-warp staging tiles.
constexpr int kTileF32 = kC * kDS * 4;                        // 8448
constexpr int kOffQs = 4 * kTileF32;                          // 33792
constexpr int kOffEs = kOffQs + 48 * kDB * 2;                 // +3840
constexpr int kOffKs = kOffEs + 48 * kDB * 2;                 // +3840
constexpr int kOffQh = kOffKs + 96 * kDB * 2;                 // 49152
constexpr int kOffEh = kOffQh + 32 * kDB * 2;                 // +2560
constexpr int kOffKh = kOffEh + 32 * kDB * 2;                 // +2560
constexpr int kRegion1 = kOffKh + 32 * kDB * 2;               // 56832
constexpr int kOffAqk = 0;                                    // fp32 [64][68], later A fp32, later Z bf16
constexpr int kOffT = kC * kSS * 4;                           // fp32 [64][68], later A bf16 [64][72]
constexpr int kOffStage = 2 * kC * kSS * 4;                   // 8 x fp32 [16][20]
static_assert(kOffStage + kWarps * 16 * kStage * 4 <= kRegion1, "post-loop buffers must fit the d-tile region");
static_assert(kC * kZB * 2 <= kOffT, "the Z tile must fit where Aqk / A was");
constexpr int kOffEbar = kRegion1;                            // bf16 [64][136], persistent
constexpr std::size_t kPrepareShared = kOffEbar + kC * kEB * 2;  // 74240 (three blocks per SM)

__device__ __forceinline__ int ks_row_offset(int I) { return 8 * I * (I - 1); }  // I = 1, 2, 3 -> 0, 16, 48

// One thread's piece of a d tile in flight: row r = tid / 4, channels d0 + 8 (tid % 4) .. + 7 of q, k, b, g.
// Loaded one tile ahead (while the previous tile's scores compute), so that the global latency is hidden.
template <class T>
struct KeyPiece {
  alignas(16) T q[8], k[8], b[8];
  alignas(16) float g[8];
};

// 64 x 64 tile of Z = W * V in flight: two pieces of 8 columns per thread (piece i = tid + 256 m: row i / 8,
// columns 8 (i % 8) .. + 7).
template <class T>
struct ZPieces {
  alignas(16) T w[2][8], v[2][8];
};

template <class T>
__global__ void __launch_bounds__(kThreads, 3)
tc_prepare_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                  const float* __restrict__ g, const T* __restrict__ b, const T* __restrict__ w,
                  const std::int32_t* __restrict__ cu_seqlens, int N, int T_, int H, int HV, int K, int V,
                  int KP, int VP, float scale, bf16* __restrict__ ws_aqk, bf16* __restrict__ ws_y,
                  bf16* __restrict__ ws_u, bf16* __restrict__ ws_qg, bf16* __restrict__ ws_ktail,
                  float* __restrict__ ws_gamma_c, bf16* __restrict__ ws_a, bool vector_loads) {
  extern __shared__ __align__(128) unsigned char smem[];
  float* tG = reinterpret_cast<float*>(smem);
  float* tq = tG + kC * kDS;
  float* tk = tq + kC * kDS;
  float* te = tk + kC * kDS;  // e = b * k
  bf16* Qs = reinterpret_cast<bf16*>(smem + kOffQs);  // row r - 16: q_r exp(G_r - G_i0(r))
  bf16* Es = reinterpret_cast<bf16*>(smem + kOffEs);  // row r - 16: e_r exp(G_r - G_i0(r))
  bf16* Ks = reinterpret_cast<bf16*>(smem + kOffKs);  // row ks_row_offset(I) + s: k_s exp(G_16I - G_s)
  bf16* Qh = reinterpret_cast<bf16*>(smem + kOffQh);  // row 8 I + i: q_r exp(G_r - G_m), r = 16 I + 8 + i, m = 16 I + 8
  bf16* Eh = reinterpret_cast<bf16*>(smem + kOffEh);  // row 8 I + i: e_r exp(G_r - G_m)
  bf16* Kh = reinterpret_cast<bf16*>(smem + kOffKh);  // row 8 I + i: k_s exp(G_m - G_s), s = 16 I + i
  float* sAqk = reinterpret_cast<float*>(smem + kOffAqk);
  float* sA = sAqk;  // A = (I + T)^{-1}, fp32, once Aqk is stored
  float* sT = reinterpret_cast<float*>(smem + kOffT);
  bf16* sAb = reinterpret_cast<bf16*>(smem + kOffT);   // A in bf16, once T is dead
  bf16* sZ = reinterpret_cast<bf16*>(smem + kOffAqk);  // Z = W * V tile, once A (fp32) is dead
  float* stage = reinterpret_cast<float*>(smem + kOffStage);
  bf16* sEbar = reinterpret_cast<bf16*>(smem + kOffEbar);

  __shared__ Slot slot_shared;
  if (threadIdx.x == 0) slot_shared = find_slot(cu_seqlens, N, T_, blockIdx.x);
  __syncthreads();
  const Slot chunk = slot_shared;
  if (chunk.len <= 0) return;
  const int h = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, len = chunk.len;
  const std::int64_t slot = blockIdx.x;
  auto key_row = [&](int r) { return (chunk.t0 + r) * H + h; };  // row of a [BT, H, .] tensor

  // Off-diagonal 16 x 16 score blocks (I, J), J < I: warp w < 6 owns pair w (both Aqk and T).
  // Pairs in order (1,0), (2,0), (2,1), (3,0), (3,1), (3,2): I = 1 + [w >= 1] + [w >= 3], J = w - I (I - 1) / 2.
  // Warps 6 and 7 own the 8 x 8 blocks inside diagonal blocks 2 P, 2 P + 1 (P = w - 6), computed as one 16 x 16
  // product of Qh / Eh rows 16 P.. with Kh rows 16 P.. whose two diagonal 8 x 8 quadrants are the ones wanted.
  const int pair_I = 1 + (warp >= 1) + (warp >= 3), pair_J = warp - pair_I * (pair_I - 1) / 2;
  Acc16 acc_aqk, acc_t;  // (mma_sync.cuh)
  acc_aqk.zero();
  acc_t.zero();
  // The eight 8 x 8 diagonal blocks in FFMA, only the 8 x 36 = 288 pairs s <= r, p = 36 B + i (i + 1) / 2 + j:
  // rows r = 8 B + i, columns s = 8 B + j, j <= i. Thread t computes pair t on all 32 channels of a d tile, and
  // 4 channels (4 (t % 8) ..) of pair 256 + t / 8; the 8 lanes sharing that pair sum their parts at the end.
  constexpr int kPairsPerBlock = 8 * 9 / 2;
  auto pair_rows = [](int p, int& r, int& s) {
    const int B = p / kPairsPerBlock, pq = p % kPairsPerBlock;
    int i = 0;
    while ((i + 1) * (i + 2) / 2 <= pq) ++i;
    r = 8 * B + i;
    s = 8 * B + pq - i * (i + 1) / 2;
  };
  int diag_r[2], diag_s[2];
  pair_rows(tid, diag_r[0], diag_s[0]);
  pair_rows(kThreads + tid / 8, diag_r[1], diag_s[1]);
  const int extra_c = 4 * (tid % 8);
  float diag_aqk[2] = {0, 0}, diag_t[2] = {0, 0};

  // The d tiles' inputs, one tile ahead (rows >= len and channels >= K are zeros; g = 0 there keeps G constant).
  const int piece_r = tid >> 2, piece_c = 8 * (tid & 3);
  KeyPiece<T> next;
  auto fetch_tile = [&](int d0) {
    const int d = d0 + piece_c, valid = piece_r < len ? max(0, min(8, K - d)) : 0;
    const std::int64_t at = valid > 0 ? key_row(piece_r) * K + d : 0;
    load8(next.q, q + at, valid, vector_loads);
    load8(next.k, k + at, valid, vector_loads);
    load8(next.b, b + at, valid, vector_loads);
    load8(next.g, g + at, valid, vector_loads);
  };
  fetch_tile(0);
  for (int d0 = 0; d0 < KP; d0 += kDT) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {  // (lanes: rows r .. r + 7 x 4 pieces, banks r + 8 p + j all distinct)
      const int at = piece_r * kDS + piece_c + j;
      const float kv = to_float(next.k[j]);
      tG[at] = next.g[j];
      tq[at] = to_float(next.q[j]);
      tk[at] = kv;
      te[at] = to_float(next.b[j]) * kv;
    }
    __syncthreads();
    {  // Eq. 18: G_r = sum_{i<=r} g_i per channel (kept as G2 = G log2 e); 8 lanes per channel, shuffle scan.
      const int c = tid >> 3, seg = tid & 7, r0 = seg * 8;
      float prefix[8], acc = 0.0f;
#pragma unroll
      for (int i = 0; i < 8; ++i) prefix[i] = (acc += tG[(r0 + i) * kDS + c]);
      float offset = acc;
#pragma unroll
      for (int delta = 1; delta < 8; delta *= 2) {
        const float other = __shfl_up_sync(0xffffffffu, offset, delta, 8);
        if (seg >= delta) offset += other;
      }
      offset -= acc;
#pragma unroll
      for (int i = 0; i < 8; ++i) tG[(r0 + i) * kDS + c] = (offset + prefix[i]) * kLog2e;  // G2 = G log2(e)
    }
    __syncthreads();
    // Elementwise: outputs of Eq. 24-25 and the prescaled operands (every exp has a non-positive argument). Each
    // thread takes its piece (row r, 8 channels) and writes 16-byte rows of 8 bf16.
    {
      const int r = piece_r, c = piece_c, d = d0 + c;
      const float* Gr = tG + r * kDS + c;
      const float* Gl = tG + (len - 1) * kDS + c;  // G at the chunk's last row (in units of log2(e))
      float G[8], out[8];  // (gamma_r = exp2(G) is recomputed where used: fewer live registers)
#pragma unroll
      for (int j = 0; j < 8; ++j) G[j] = Gr[j];
      const float* qr = tq + r * kDS + c;
      const float* kr = tk + r * kDS + c;
      const float* er = te + r * kDS + c;
      if (d < KP) {
        if (r < len) {
#pragma unroll
          for (int j = 0; j < 8; ++j) out[j] = scale * fast_exp2(G[j]) * qr[j];  // Eq. 24: scale gamma_r q_r
          store8_bf16(ws_qg + key_row(r) * KP + d, out);
#pragma unroll
          for (int j = 0; j < 8; ++j) out[j] = kr[j] * fast_exp2(Gl[j] - G[j]);  // Eq. 25: Ktail row r
          store8_bf16(ws_ktail + key_row(r) * KP + d, out);
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) out[j] = fast_exp2(G[j]) * er[j];  // Ebar_r = gamma_r b_r k_r
        store8_bf16(sEbar + r * kEB + d, out);
        if (r == 0) {
#pragma unroll
          for (int j = 0; j < 8; ++j) ws_gamma_c[(slot * H + h) * KP + d + j] = fast_exp2(Gl[j]);  // gamma_C
        }
      }
#pragma unroll
      for (int I = 1; I < 4; ++I) {
        if (r < 16 * I) {
          const float* Gp = tG + 16 * I * kDS + c;
#pragma unroll
          for (int j = 0; j < 8; ++j) out[j] = kr[j] * fast_exp2(Gp[j] - G[j]);
          store8_bf16(Ks + (ks_row_offset(I) + r) * kDB + c, out);
        }
      }
      if (r >= 16) {
        const float* Gp = tG + (r & ~15) * kDS + c;  // pivot: the first row of r's block
#pragma unroll
        for (int j = 0; j < 8; ++j) {  // in place: G becomes the own factor exp2(G_r - G_i0) (the last use of G)
          G[j] = fast_exp2(G[j] - Gp[j]);
          out[j] = qr[j] * G[j];
        }
        store8_bf16(Qs + (r - 16) * kDB + c, out);
#pragma unroll
        for (int j = 0; j < 8; ++j) out[j] = er[j] * G[j];
        store8_bf16(Es + (r - 16) * kDB + c, out);
      }
      {  // inside the diagonal block, pivot m = first row of its second half: factors exp2(G_r - G_m), r >= m,
         // for rows in the second half, exp2(G_m - G_s), s < m, for rows in the first
        const float* Gm = tG + ((r & ~15) + 8) * kDS + c;
        const float* Gown = tG + r * kDS + c;
        const int half_row = 8 * (r >> 4) + (r & 7);
        if (r & 8) {
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            G[j] = fast_exp2(Gown[j] - Gm[j]);
            out[j] = qr[j] * G[j];
          }
          store8_bf16(Qh + half_row * kDB + c, out);
#pragma unroll
          for (int j = 0; j < 8; ++j) out[j] = er[j] * G[j];
          store8_bf16(Eh + half_row * kDB + c, out);
        } else {
#pragma unroll
          for (int j = 0; j < 8; ++j) out[j] = kr[j] * fast_exp2(Gm[j] - Gown[j]);
          store8_bf16(Kh + half_row * kDB + c, out);
        }
      }
    }
    __syncthreads();
    if (d0 + kDT < KP) fetch_tile(d0 + kDT);  // lands while the scores below compute
    // Off-diagonal blocks: (Aqk)_IJ += Qs_I Ks_{I,J}^T and T_IJ += Es_I Ks_{I,J}^T (exp(G_r - G_s) factorised).
    {  // warps 0-5: the off-diagonal 16 x 16 blocks; warps 6, 7: the 8 x 8 blocks inside the diagonal blocks
      const bf16* a_q_rows = warp < 6 ? Qs + 16 * (pair_I - 1) * kDB : Qh + 16 * (warp - 6) * kDB;
      const bf16* a_e_rows = warp < 6 ? Es + 16 * (pair_I - 1) * kDB : Eh + 16 * (warp - 6) * kDB;
      const bf16* b_k_rows = warp < 6 ? Ks + (ks_row_offset(pair_I) + 16 * pair_J) * kDB : Kh + 16 * (warp - 6) * kDB;
#pragma unroll
      for (int ks = 0; ks < kDT; ks += 16) {
        Frag16 a_q, a_e, b_k;
        load_a(a_q, a_q_rows + ks, kDB, lane);
        load_a(a_e, a_e_rows + ks, kDB, lane);
        load_b_transposed(b_k, b_k_rows + ks, kDB, lane);  // (d, s) = K[s][d]
        mma(acc_aqk, a_q, b_k);
        mma(acc_t, a_e, b_k);
      }
    }
    // The 8 x 8 diagonal blocks: exact decay exp(G_r - G_s), s <= r.
    {
      const float* Gr = tG + diag_r[0] * kDS;
      const float* Gs = tG + diag_s[0] * kDS;
      const float* qr = tq + diag_r[0] * kDS;
      const float* er = te + diag_r[0] * kDS;
      const float* ks = tk + diag_s[0] * kDS;
      float a = diag_aqk[0], t = diag_t[0];
#pragma unroll 8
      for (int dd = 0; dd < kDT; ++dd) {
        const float decayed_key = ks[dd] * fast_exp2(Gr[dd] - Gs[dd]);
        a = fmaf(qr[dd], decayed_key, a);
        t = fmaf(er[dd], decayed_key, t);
      }
      diag_aqk[0] = a;
      diag_t[0] = t;
      Gr = tG + diag_r[1] * kDS + extra_c;
      Gs = tG + diag_s[1] * kDS + extra_c;
      qr = tq + diag_r[1] * kDS + extra_c;
      er = te + diag_r[1] * kDS + extra_c;
      ks = tk + diag_s[1] * kDS + extra_c;
      a = diag_aqk[1];
      t = diag_t[1];
#pragma unroll
      for (int dd = 0; dd < 4; ++dd) {
        const float decayed_key = ks[dd] * fast_exp2(Gr[dd] - Gs[dd]);
        a = fmaf(qr[dd], decayed_key, a);
        t = fmaf(er[dd], decayed_key, t);
      }
      diag_aqk[1] = a;
      diag_t[1] = t;
    }
    __syncthreads();
  }

  // Assemble Aqk and T (64 x 64): off-diagonal blocks from the fragments, diagonal blocks from the FFMA
  // accumulators, blocks above the diagonal zero.
  if (warp < 6) {
    const int I = pair_I, J = pair_J;
    acc_aqk.store(sAqk + 16 * I * kSS + 16 * J, kSS, lane);
    acc_t.store(sT + 16 * I * kSS + 16 * J, kSS, lane);
  } else {  // the two wanted quadrants of the 16 x 16 product: rows and columns 0-7 (the pair c[0][0..1] of each
            // lane) are block 2 P's, rows and columns 8-15 (c[1][2..3]) block 2 P + 1's: rows 16 I + 8 + i,
            // columns 16 I + j (i, j < 8)
    const int P = warp - 6, i = lane >> 2, j = 2 * (lane & 3);
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const int I = 2 * P + q, at = (16 * I + 8 + i) * kSS + 16 * I + j;
      *reinterpret_cast<float2*>(sAqk + at) = make_float2(acc_aqk.c[q][2 * q], acc_aqk.c[q][2 * q + 1]);
      *reinterpret_cast<float2*>(sT + at) = make_float2(acc_t.c[q][2 * q], acc_t.c[q][2 * q + 1]);
    }
  }
  // The extra pair's 4-channel parts: the 8 lanes that share it sum them.
#pragma unroll
  for (int delta = 1; delta < 8; delta *= 2) {
    diag_aqk[1] += __shfl_xor_sync(0xffffffffu, diag_aqk[1], delta);
    diag_t[1] += __shfl_xor_sync(0xffffffffu, diag_t[1], delta);
  }
  for (int i = tid; i < kC * kC; i += kThreads) {  // blocks above the diagonal, and s > r inside it
    const int r = i / kC, c = i % kC;
    if (c / 16 > r / 16 || (c / 16 == r / 16 && c > r)) sAqk[r * kSS + c] = sT[r * kSS + c] = 0.0f;
  }
  sAqk[diag_r[0] * kSS + diag_s[0]] = diag_aqk[0];
  sT[diag_r[0] * kSS + diag_s[0]] = diag_t[0];
  if (tid % 8 == 0) {
    sAqk[diag_r[1] * kSS + diag_s[1]] = diag_aqk[1];
    sT[diag_r[1] * kSS + diag_s[1]] = diag_t[1];
  }
  __syncthreads();
  // Aqk (times scale, s <= r) to the workspace; T keeps s < r on rows < len (Eq. 19).
  for (int i = tid; i < kC * kC; i += kThreads) {
    const int r = i / kC, s = i % kC;
    if (r < len) ws_aqk[key_row(r) * kC + s] = __float2bfloat16_rn(s <= r ? scale * sAqk[r * kSS + s] : 0.0f);
    if (!(s < r && r < len)) sT[r * kSS + s] = 0.0f;
  }
  __syncthreads();
  // The first Z = W * V tile (of U = A Z below) is fetched now and lands during the solve; tile z is value head
  // h * group + z / z_cols, columns 64 (z % z_cols) ...
  const int group = HV / H, z_cols = (VP + kZT - 1) / kZT, z_tiles = group * z_cols;
  ZPieces<T> znext;
  auto fetch_z = [&](int z) {
    const int hv = h * group + z / z_cols, c0 = kZT * (z % z_cols);
#pragma unroll
    for (int m = 0; m < 2; ++m) {
      const int i = tid + kThreads * m, r = i >> 3, c = c0 + 8 * (i & 7);
      const int valid = r < len ? max(0, min(8, V - c)) : 0;
      const std::int64_t at = valid > 0 ? ((chunk.t0 + r) * HV + hv) * V + c : 0;
      load8(znext.w[m], w + at, valid, vector_loads);
      load8(znext.v[m], v + at, valid, vector_loads);
    }
  };
  fetch_z(0);
  // Eq. 20: A = (I + T)^{-1} in fp32, by 16 x 16 blocks. Diagonal blocks A_II = (I + T_II)^{-1}: warp I,
  // lane c < 16 solves column c by forward substitution in registers. Then, block row by block row,
  // A_IJ = -A_II X_IJ with X_IJ = sum_{M=J}^{I-1} T_IM A_MJ (J < I).
  float* sX = stage;  // X_IJ for the current block row, up to 3 blocks of 16 x 16
  if (warp < 4) {
    const int I = warp, c = lane & 15;
    float col[16];
#pragma unroll
    for (int r = 0; r < 16; ++r) {
      float sum = 0.0f;
#pragma unroll
      for (int s = 0; s < r; ++s) sum = fmaf(sT[(16 * I + r) * kSS + 16 * I + s], col[s], sum);
      col[r] = r == c ? 1.0f : (r < c ? 0.0f : -sum);
    }
    if (lane < 16) {
#pragma unroll
      for (int r = 0; r < 16; ++r) sA[(16 * I + r) * kSS + 16 * I + c] = col[r];
    }
  }
  __syncthreads();
  for (int I = 1; I < 4; ++I) {
    for (int e = tid; e < I * 256; e += kThreads) {  // X_IJ[p][j], J = e / 256
      const int J = e >> 8, p = (e >> 4) & 15, j = e & 15;
      const float* t_row = sT + (16 * I + p) * kSS;
      const float* a_col = sA + 16 * J + j;
      float x0 = 0.0f, x1 = 0.0f;  // two chains: the loads of a 16-term block issue together
      for (int q0 = 16 * J; q0 < 16 * I; q0 += 16) {
#pragma unroll
        for (int q = q0; q < q0 + 16; q += 2) {
          x0 = fmaf(t_row[q], a_col[q * kSS], x0);
          x1 = fmaf(t_row[q + 1], a_col[(q + 1) * kSS], x1);
        }
      }
      sX[e] = x0 + x1;
    }
    __syncthreads();
    for (int e = tid; e < I * 256; e += kThreads) {  // A_IJ[i][j] = -sum_{p<=i} A_II[i][p] X_IJ[p][j]
      const int J = e >> 8, i = (e >> 4) & 15, j = e & 15;
      const float* a_row = sA + (16 * I + i) * kSS + 16 * I;
      float a = 0.0f;
#pragma unroll
      for (int p = 0; p < 16; ++p) a = fmaf(a_row[p], sX[(J << 8) + p * 16 + j], a);  // A_II[i][p] = 0 for p > i
      sA[(16 * I + i) * kSS + 16 * J + j] = -a;
    }
    __syncthreads();
  }
  for (int i = tid; i < kC * kC; i += kThreads) {
    const int r = i / kC, c = i % kC;
    const bf16 a = __float2bfloat16_rn(c / 16 > r / 16 ? 0.0f : sA[r * kSS + c]);
    sAb[r * kAB + c] = a;
    if (ws_a != nullptr && r < len) ws_a[key_row(r) * kC + c] = a;  // the backward's copy of A (Eq. 20)
  }
  __syncthreads();

  // A X for a 64-row bf16 operand X (row stride ldx, col_tiles tiles of 16 columns), A lower triangular: row block
  // rb needs the k blocks kb <= rb. Tile (rb, cb) goes to global memory as bf16 rows, row i at out(rb, cb, i).
  float* my_stage = stage + warp * 16 * kStage;
  auto lower_product = [&](const bf16* X, int ldx, int col_tiles, auto out) {
    for (int t = warp; t < 4 * col_tiles; t += kWarps) {
      const int rb = t / col_tiles, cb = t % col_tiles;
      Acc16 acc;
      acc.zero();
      mma_ab(acc, sAb + 16 * rb * kAB, kAB, X + 16 * cb, ldx, rb + 1, lane);
      acc.store(my_stage, kStage, lane);
      __syncwarp();
      store_tile_bf16(my_stage, len - 16 * rb, [&](int i) { return out(rb, cb, i); }, lane);
      __syncwarp();
    }
  };
  // Y = A Ebar (Eq. 21).
  lower_product(sEbar, kEB, KP / 16, [&](int rb, int cb, int i) { return ws_y + key_row(16 * rb + i) * KP + 16 * cb; });

  // U = A Z (Eq. 22), Z = W * V, for every value head of the key head's group, 64 value columns at a time.
  for (int z = 0; z < z_tiles; ++z) {
    const int hv = h * group + z / z_cols, c0 = kZT * (z % z_cols);
    __syncthreads();  // the previous Z tile is consumed (and A fp32, which Z overwrites, is dead)
#pragma unroll
    for (int m = 0; m < 2; ++m) {  // the prepare kernel's rounding: bf16(w * v)
      const int i = tid + kThreads * m, r = i >> 3, cc = 8 * (i & 7);
      alignas(16) bf16 packed[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) packed[j] = __float2bfloat16_rn(to_float(znext.w[m][j]) * to_float(znext.v[m][j]));
      *reinterpret_cast<uint4*>(sZ + r * kZB + cc) = *reinterpret_cast<const uint4*>(packed);
    }
    __syncthreads();
    if (z + 1 < z_tiles) fetch_z(z + 1);  // lands while this tile's products run
    lower_product(sZ, kZB, min(kZT, VP - c0) / 16, [&](int rb, int cb, int i) {
      return ws_u + ((chunk.t0 + 16 * rb + i) * HV + hv) * VP + c0 + 16 * cb;
    });
  }
}

// ---- state kernel --------------------------------------------------------------------------------------
template <int VT>
struct StateLayout {  // byte offsets in dynamic shared memory (every buffer 128-byte aligned)
  static constexpr int SF = VT + 4;  // fp32 row stride
  static constexpr int SB = VT + 8;  // bf16 row stride
  static constexpr int s32 = 0;                                  // S fp32 [128][SF]: h0 in, ht out (S lives in registers)
  static constexpr int sb = s32 + round_up(kKMax * SF * 4, 128); // S bf16 [128][SB]
  static constexpr int y = sb + round_up(kKMax * SB * 2, 128);   // Y bf16 [64][136]
  static constexpr int qg = y + round_up(kC * kEB * 2, 128);     // Qgamma bf16 [64][136]
  static constexpr int kt = qg + round_up(kC * kEB * 2, 128);    // Ktail bf16 [64][136]
  static constexpr int aq = kt + round_up(kC * kEB * 2, 128);    // Aqk bf16 [64][72]
  static constexpr int u = aq + round_up(kC * kAB * 2, 128);     // U bf16 [64][SB]
  static constexpr int gam = u + round_up(kC * SB * 2, 128);     // gamma_C fp32 [128]
  static constexpr int o32 = gam + kKMax * 4;                    // O fp32 [64][SF] (staging of the output tiles)
  static constexpr int rb = o32 + round_up(kC * SF * 4, 128);    // R bf16 [64][SB]
  static constexpr int bytes = rb + round_up(kC * SB * 2, 128);  // VT = 32: 110080 (two blocks per SM)
};

// Output: O (Eq. 24) to o; without it (phase B of the backward) Qgamma and Aqk are not loaded.
// StoreStates (phase B, or a forward that fills a SavedForward): the chunk-start state S_c of every chunk is written
// to `states` [slots, HV, KP, VP] and R to r_out [BT, HV, VP], both bf16 (the operands the products used).
//
// Each chunk runs three stages, R (Eq. 23), O (Eq. 24) and the state update (Eq. 25), and its inputs arrive in three
// cp.async groups, each issued as soon as the stage that read the previous chunk's copy has finished, so that every
// load overlaps two stages before it is needed:
//   group 1, Y and U:              issued when O(c - 1) starts, needed by R(c);
//   group 2, Qgamma and Aqk:       issued when the update of c - 1 starts, needed by O(c) (empty without Output);
//   group 3, Ktail and gamma_C:    issued when R(c) starts, needed by the update of c.
// A group is committed (possibly empty) at every stage start, so each stage opens the same way: wait until at most
// one group is in flight (the one committed last, two stages ahead), then __syncthreads.
// The products are mma.sync with ldmatrix operands (mma_sync.cuh), whose fragment layouts are fixed by the PTX ISA.
// NK: KP / 16 when known at compile time (8: K in 113..128, the common head size), so that every k loop unrolls;
// 0: read from KP.
template <class T, int VT, bool Output, bool StoreStates, int NK>
__global__ void __launch_bounds__(kThreads, VT <= 32 ? 2 : 1)  // two blocks per SM at VT <= 32 (shared memory fits)
tc_state_kernel(const float* h0, T* __restrict__ o, float* ht, const std::int32_t* __restrict__ cu_seqlens, int T_,
                int H, int HV, int K, int V, int KP, int VP, const bf16* __restrict__ ws_aqk,
                const bf16* __restrict__ ws_y, const bf16* __restrict__ ws_u, const bf16* __restrict__ ws_qg,
                const bf16* __restrict__ ws_ktail, const float* __restrict__ ws_gamma_c, bf16* __restrict__ states,
                bf16* __restrict__ r_out) {
  using L = StateLayout<VT>;
  constexpr int SF = L::SF, SB = L::SB, nv = VT / 16;
  extern __shared__ __align__(128) unsigned char smem[];
  float* S32 = reinterpret_cast<float*>(smem + L::s32);
  bf16* Sb = reinterpret_cast<bf16*>(smem + L::sb);
  bf16* Yb = reinterpret_cast<bf16*>(smem + L::y);
  bf16* Qg = reinterpret_cast<bf16*>(smem + L::qg);
  bf16* Kt = reinterpret_cast<bf16*>(smem + L::kt);
  bf16* Aq = reinterpret_cast<bf16*>(smem + L::aq);
  bf16* Ub = reinterpret_cast<bf16*>(smem + L::u);
  float* gam = reinterpret_cast<float*>(smem + L::gam);
  float* O32 = reinterpret_cast<float*>(smem + L::o32);
  bf16* Rb = reinterpret_cast<bf16*>(smem + L::rb);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int c0 = blockIdx.x * VT, hv = blockIdx.y, n = blockIdx.z, h = hv / (HV / H);
  const int nk = NK > 0 ? NK : KP / 16, key_pieces = KP / 8, u_valid = max(0, min(VT, VP - c0)) / 8;
  const SeqRange seq = sequence_range(cu_seqlens, n, T_);
  const std::size_t state_base = (static_cast<std::size_t>(n) * HV + hv) * K * V;
  const int chunks = static_cast<int>((seq.eos - seq.bos + kC - 1) / kC);
  auto chunk_t0 = [&](int ci) { return seq.bos + static_cast<std::int64_t>(ci) * kC; };
  auto key_tile = [&](bf16* dst, const bf16* ws, int ci) {  // rows of a [BT, H, KP] workspace tensor
    const std::int64_t t0 = chunk_t0(ci);
    async_rows<kKMax / 8>(dst, kEB, ws + (t0 * H + h) * static_cast<std::int64_t>(KP), std::int64_t(H) * KP,
                          chunk_length(t0, seq.eos), key_pieces, tid);
  };
  // Each issue_group_* commits one group; chunks past the last give empty groups (see above).
  auto issue_group_1 = [&](int ci) {
    if (ci < chunks) {
      const std::int64_t t0 = chunk_t0(ci);
      key_tile(Yb, ws_y, ci);
      async_rows<VT / 8>(Ub, SB, ws_u + (t0 * HV + hv) * static_cast<std::int64_t>(VP) + c0,
                         std::int64_t(HV) * VP, chunk_length(t0, seq.eos), u_valid, tid);
    }
    __pipeline_commit();
  };
  auto issue_group_2 = [&](int ci) {
    if (Output && ci < chunks) {
      const std::int64_t t0 = chunk_t0(ci);
      key_tile(Qg, ws_qg, ci);
      async_rows<kC / 8>(Aq, kAB, ws_aqk + (t0 * H + h) * kC, std::int64_t(H) * kC, chunk_length(t0, seq.eos), kC / 8, tid);
    }
    __pipeline_commit();
  };
  __shared__ std::int64_t slot_base_shared;  // the first chunk slot of sequence n
  if (tid == 0) slot_base_shared = first_slot(cu_seqlens, n, T_);
  __syncthreads();
  const std::int64_t slot_base = slot_base_shared;
  auto issue_group_3 = [&](int ci) {
    if (ci < chunks) {
      key_tile(Kt, ws_ktail, ci);
      for (int i = tid; i < KP / 4; i += kThreads)
        __pipeline_memcpy_async(gam + 4 * i, ws_gamma_c + ((slot_base + ci) * H + h) * KP + 4 * i, 16);
    }
    __pipeline_commit();
  };
  auto open_stage = [&] {  // wait for the oldest but one group in flight, make everything visible
    __pipeline_wait_prior(1);
    __syncthreads();
  };

  issue_group_1(0);
  issue_group_2(0);
  // S_0 = h0 (zeros without h0; padded rows and columns zero).
  for (int i = tid; i < KP * VT; i += kThreads) {
    const int d = i / VT, c = i % VT;
    const float s = (h0 != nullptr && d < K && c0 + c < V) ? h0[state_base + static_cast<std::size_t>(d) * V + c0 + c] : 0.0f;
    S32[d * SF + c] = s;
    Sb[d * SB + c] = __float2bfloat16_rn(s);
  }
  __syncthreads();
  // The fp32 master of S lives in registers: warp w owns the 16 x 16 tiles t = w + 8 j (j < nv) of the nk x nv
  // tiles, as accumulators that the update of Eq. 25 accumulates into.
  const int tiles = nk * nv;
  Acc16 state[nv];
#pragma unroll
  for (int j = 0; j < nv; ++j) {
    const int t = warp + kWarps * j;
    if (t < tiles) {
      const float* tile = S32 + 16 * (t / nv) * SF + 16 * (t % nv);
      state[j].load(tile, SF, lane);
    }
  }

  for (int ci = 0; ci < chunks; ++ci) {
    const std::int64_t t0 = chunk_t0(ci);
    const int len = chunk_length(t0, seq.eos);
    // ---- R: Eq. 23, R = U - Y S_0 (rows >= len are zero: Y and U were zero-filled there).
    open_stage();  // group 1 of this chunk has landed; S_0 (the previous update) is complete
    issue_group_3(ci);
    if constexpr (StoreStates) {  // S_c (bf16, the operand the products use), the state at this chunk's start
      bf16* out = states + ((slot_base + ci) * HV + hv) * static_cast<std::size_t>(KP) * VP;
      for (int i = tid; i < KP * (VT / 8); i += kThreads) {
        const int d = i / (VT / 8), piece = i % (VT / 8), c = c0 + 8 * piece;
        if (c < VP)
          *reinterpret_cast<uint4*>(out + static_cast<std::size_t>(d) * VP + c) =
              *reinterpret_cast<const uint4*>(Sb + d * SB + 8 * piece);
      }
    }
    for (int t = warp; t < 4 * nv; t += kWarps) {
      const int rb = t / nv, cb = t % nv;
      Acc16 acc;
      acc.zero();
      mma_ab(acc, Yb + 16 * rb * kEB, kEB, Sb + 16 * cb, SB, nk, lane);
      const int base = 16 * rb * SB + 16 * cb;
#pragma unroll
      for (int hh = 0; hh < 2; ++hh)
#pragma unroll
        for (int i2 = 0; i2 < 2; ++i2) {  // straight from the accumulator, two columns at a time
          const int at = base + Acc16::pair_offset(lane, SB, hh, i2);
          const float2 u = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(Ub + at));
          *reinterpret_cast<__nv_bfloat162*>(Rb + at) =
              __floats2bfloat162_rn(u.x - acc.c[hh][2 * i2], u.y - acc.c[hh][2 * i2 + 1]);
        }
    }

    // ---- O: Eq. 24, O = Qgamma S_0 + Aqk R (scale folded into both), staged in O32.
    open_stage();  // group 2 has landed; R is complete; Y and U are dead
    issue_group_1(ci + 1);
    if constexpr (StoreStates) {  // R (bf16, as the products used it) to r_out [BT, HV, VP] for phase D
      for (int i = tid; i < kC * (VT / 8); i += kThreads) {
        const int r = i / (VT / 8), piece = i % (VT / 8), c = c0 + 8 * piece;
        if (r < len && c < VP)
          *reinterpret_cast<uint4*>(r_out + (t0 + r) * HV * static_cast<std::int64_t>(VP) + hv * VP + c) =
              *reinterpret_cast<const uint4*>(Rb + r * SB + 8 * piece);
      }
    }
    for (int t = warp; t < (Output ? 4 * nv : 0); t += kWarps) {
      const int rb = t / nv, cb = t % nv;
      Acc16 acc;
      acc.zero();
      mma_ab(acc, Qg + 16 * rb * kEB, kEB, Sb + 16 * cb, SB, nk, lane);
      mma_ab(acc, Aq + 16 * rb * kAB, kAB, Rb + 16 * cb, SB, rb + 1, lane);  // Aqk is lower triangular
      float* tile = O32 + 16 * rb * SF + 16 * cb;
      acc.store(tile, SF, lane);
      __syncwarp();
      // Lane -> row i = lane / 2, 8 columns: one 16-byte store when the 8 lie inside V and V % 8 == 0.
      const int i = lane >> 1, j0 = (lane & 1) * 8, r = 16 * rb + i, c = c0 + 16 * cb + j0;
      if (r < len) {
        T* dst = o + ((t0 + r) * HV + hv) * static_cast<std::int64_t>(V) + c;
        if (sizeof(T) == 2 && V % 8 == 0 && c + 8 <= V) {
          alignas(16) T packed[8];
#pragma unroll
          for (int j = 0; j < 8; ++j) packed[j] = from_float<T>(tile[i * SF + j0 + j]);
          *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(packed);
        } else {
          for (int j = 0; j < 8 && c + j < V; ++j) dst[j] = from_float<T>(tile[i * SF + j0 + j]);
        }
      }
    }

    // ---- Eq. 25: S_C = Diag(gamma_C) S_0 + Ktail^T R; each warp updates its own 16 x 16 tiles in place.
    open_stage();  // group 3 has landed; Qgamma, Aqk and S_0 are no longer read
    issue_group_2(ci + 1);
#pragma unroll
    for (int j = 0; j < nv; ++j) {
      const int t = warp + kWarps * j, db = t / nv, cb = t % nv;
      if (t >= tiles) continue;
      Acc16& acc = state[j];
      acc.scale_rows(gam + 16 * db, lane);
      mma_atb(acc, Kt + 16 * db, kEB, Rb + 16 * cb, SB, kC / 16, lane);  // Ktail^T: element (d, s) = Ktail[s][d]
      acc.store_bf16(Sb + 16 * db * SB + 16 * cb, SB, lane);  // the bf16 operand copy, straight from the accumulator
    }
  }
  __pipeline_wait_prior(0);
#pragma unroll
  for (int j = 0; j < nv; ++j) {
    const int t = warp + kWarps * j;
    if (t < tiles) {
      float* tile = S32 + 16 * (t / nv) * SF + 16 * (t % nv);
      state[j].store(tile, SF, lane);
    }
  }
  __syncthreads();
  if (ht != nullptr) {
    for (int i = tid; i < K * VT; i += kThreads) {
      const int d = i / VT, c = i % VT;
      if (c0 + c < V) ht[state_base + static_cast<std::size_t>(d) * V + c0 + c] = S32[d * SF + c];
    }
  }
}

// Launches tc_state_kernel<Output, StoreStates> over (value tiles, value heads, sequences).
template <class T, int VT, bool Output, bool StoreStates>
void launch_tc_state(const Problem& p, const float* h0, T* o, float* ht, int N, const PrepareWorkspace& w,
                     bf16* states, bf16* r_out, cudaStream_t stream, const char* who) {
  constexpr int bytes = StateLayout<VT>::bytes;
  auto kernel = round_up(p.K, 16) == kKMax ? tc_state_kernel<T, VT, Output, StoreStates, kKMax / 16>
                                           : tc_state_kernel<T, VT, Output, StoreStates, 0>;
  const char* name = Output ? (StoreStates ? "tc_state_kernel<output, store states>" : "tc_state_kernel<output>")
                            : "tc_state_kernel<store states>";
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), who,
        (std::string("cudaFuncSetAttribute(") + name + ", max dynamic shared memory)").c_str());
  const dim3 grid((p.V + VT - 1) / VT, p.HV, N);
  kernel<<<grid, kThreads, bytes, stream>>>(h0, o, ht, p.cu_seqlens, p.T, p.H, p.HV, p.K, p.V, round_up(p.K, 16),
                                            round_up(p.V, 16), w.aqk, w.y, w.u, w.qg, w.ktail, w.gamma_c, states,
                                            r_out);
  check_launch(who, name);
}

}  // namespace

bool tensor_core_forward_eligible(const Problem& p) { return p.dtype != DType::f32 && p.K <= kKMax; }

void chunk_forward_tensor_core(const Problem& p, const ForwardTensors& x, const Validated& checked, int state_vt,
                               const SavedParts* save, cudaStream_t stream, const char* who) {
  if (save != nullptr) {  // the intermediates, A, the chunk-start states and R go to the SavedForward's buffer
    launch_tensor_core_prepare(p, x.q, x.k, x.v, x.g, x.b, x.w, checked.N, checked.scale, save->pw, stream, who);
    dispatch_dtype(p.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      T* o = static_cast<T*>(x.o);
      if (state_vt >= 32)
        launch_tc_state<T, 32, true, true>(p, x.h0, o, x.ht, checked.N, save->pw, save->states, save->r, stream, who);
      else
        launch_tc_state<T, 16, true, true>(p, x.h0, o, x.ht, checked.N, save->pw, save->states, save->r, stream, who);
    });
    return;
  }
  const int KP = round_up(p.K, 16), VP = round_up(p.V, 16);
  const std::int64_t tokens = static_cast<std::int64_t>(p.B) * p.T;
  const int slots = slot_count(p, checked.N);
  const std::size_t aqk = static_cast<std::size_t>(tokens) * p.H * kC;
  const std::size_t key = static_cast<std::size_t>(tokens) * p.H * KP;
  const std::size_t val = static_cast<std::size_t>(tokens) * p.HV * VP;
  const std::size_t gam = static_cast<std::size_t>(slots) * p.H * KP;
  // Every part is a multiple of 16 bytes (KP, VP are multiples of 16), so each stays 16-byte aligned.
  StreamBuffer workspace((aqk + 3 * key + val) * sizeof(bf16) + gam * sizeof(float), stream, who);
  PrepareWorkspace w;
  w.aqk = workspace.as<bf16>();
  w.y = w.aqk + aqk;
  w.qg = w.y + key;
  w.ktail = w.qg + key;
  w.u = w.ktail + key;
  w.gamma_c = reinterpret_cast<float*>(w.u + val);
  launch_tensor_core_prepare(p, x.q, x.k, x.v, x.g, x.b, x.w, checked.N, checked.scale, w, stream, who);
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* o = static_cast<T*>(x.o);
    if (state_vt == 64) launch_tc_state<T, 64, true, false>(p, x.h0, o, x.ht, checked.N, w, nullptr, nullptr, stream, who);
    else if (state_vt == 32) launch_tc_state<T, 32, true, false>(p, x.h0, o, x.ht, checked.N, w, nullptr, nullptr, stream, who);
    else launch_tc_state<T, 16, true, false>(p, x.h0, o, x.ht, checked.N, w, nullptr, nullptr, stream, who);
  });
}

namespace tc {

void launch_tensor_core_prepare(const Problem& p, const void* q, const void* k, const void* v, const float* g,
                                const void* b, const void* w, int N, float scale, const PrepareWorkspace& ws,
                                cudaStream_t stream, const char* who) {
  const int KP = round_up(p.K, 16), VP = round_up(p.V, 16);
  // 16-byte loads of 8 channels when every input is 16-byte aligned and rows are whole multiples of 8 elements.
  auto aligned = [](const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0; };
  const bool vector_loads = p.K % 8 == 0 && p.V % 8 == 0 && aligned(q) && aligned(k) && aligned(v) && aligned(g) &&
                            aligned(b) && aligned(w);
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto prepare = tc_prepare_kernel<T>;
    check(cudaFuncSetAttribute(prepare, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kPrepareShared)),
          who, "cudaFuncSetAttribute(tc_prepare_kernel, max dynamic shared memory)");
    prepare<<<dim3(slot_count(p, N), p.H), kThreads, kPrepareShared, stream>>>(
        static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), g, static_cast<const T*>(b),
        static_cast<const T*>(w), p.cu_seqlens, N, p.T, p.H, p.HV, p.K, p.V, KP, VP, scale, ws.aqk, ws.y, ws.u,
        ws.qg, ws.ktail, ws.gamma_c, ws.a, vector_loads);
    check_launch(who, "tc_prepare_kernel");
  });
}

void launch_tensor_core_states(const Problem& p, const float* h0, int N, const PrepareWorkspace& ws, int vt,
                               bf16* states, bf16* r_out, cudaStream_t stream, const char* who) {
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (vt == 32) launch_tc_state<T, 32, false, true>(p, h0, nullptr, nullptr, N, ws, states, r_out, stream, who);
    else launch_tc_state<T, 16, false, true>(p, h0, nullptr, nullptr, N, ws, states, r_out, stream, who);
  });
}

}  // namespace tc
}  // namespace gdr2::cuda::detail
