// Gate-aware chunkwise backward on tensor cores (Mode::fast, bf16 / f16 inputs, 16 <= K <= 128, V <= 128, sm_90):
// spec section 6, chunk C = 64, the four phases of the fp32 program (chunk_backward.cu) on tensor cores.
//
// Every matrix product runs on bf16 tensor-core operands with fp32 accumulation (mma.sync, mma_sync.cuh); gates,
// cumulative decays and the elementwise chain stay fp32, and the sums that cancel (the rows of dG, the
// reverse cumulative sum into dg, the Ktail pairs) are combined in double as in the fp32 program
// (chunk_backward_program.cuh, chunk_gradients), whose formulas this file follows term by term.
//
// Five launches per call:
//   A  tc_prepare_kernel (chunk_forward_tc.cu) with the extra output A: the state-free intermediates of the
//      forward in bf16 (Aqk and Qgamma times scale, Y, Ktail, U, A = (I + T)^{-1}, gamma_C), per key head.
//   B  tc_state_kernel<StoreStates> (chunk_forward_tc.cu), per (value tile, value head, sequence), chunks in
//      order: the chunk-start states S_c and R = U - Y S_c (Eq. 23), both bf16 (the operands phase D uses).
//   C  tc_dstate_kernel, same items, chunks in reverse: the chunk-end state gradients dS_c (bf16),
//      dR = Aqk^T dO + Ktail dS (bf16), dS <- Diag(gamma_C) dS + Qgamma^T dO - Y^T dR, and dh0.
//   D1 tc_state_gradients_kernel, per (chunk, value head, half of the key rows): the products with S_0 and dS:
//        dQgamma = dO S_0^T (X), dY = -dR S_0^T, dKtail = R dS^T, dAqk = dO R^T (s <= r),
//        dZ = A^T dR -> dw = dZ * v, dv = dZ * w, dG_last = gamma_C rowsum(dS * S_0).
//   D2 tc_chunk_gradients_kernel, per (chunk, value head): the chunk-local chain
//        dA = dR Z^T + dY Ebar^T (strictly lower), dEbar = A^T dY, dT = -tril(A^T dA A^T, -1),
//      then, per tile of 32 key channels, the gated score VJPs
//        P = (dT o D) K, Pq = (dAqk o D) K, Q = (dT o D)^T E, Qk = (dAqk o D)^T Q,  D_rs = exp(G_r - G_s),
//      with the 16 x 16 blocks off the diagonal on tensor cores from rows prescaled by two factors that are
//      both <= 1 (pivot: the first row of r's block for P, the first row after s's block for Q), the
//      diagonal blocks in FFMA with the exact decay, and the elementwise rest of section 6 into dq, dk, db
//      and dg (stored once when HV == H, fp32 atomics when the value heads of a group add into a key head).
//      exp(-G) alone and exp of a positive argument are never formed (g = -50 per token underflows to 0).
// Workspace (per call, stream-ordered; at B=4, T=4096, H=HV=16, K=V=128): the prepare's bf16 tensors (0.31 GiB),
// the two bf16 state stores (2 x 128 MiB), R and dR bf16 [BT, HV, VP], X and dKtail fp32 and dY bf16
// [BT, HV, KP], dAqk fp32 [BT, HV, 64], dG_last fp32 [chunks, HV, KP] (0.50 GiB): 1.06 GiB in all.
// Precision: each product operand is rounded to bf16 once (unit roundoff 2^-9); the contract is gdr2-verify's
// bf16 one (error within 8 x that of the reference run in bfloat16).
#include <cstdint>
#include <type_traits>

#include "chunk_backward_tc.cuh"
#include "mma_sync.cuh"
#include "saved_forward.cuh"
#include "tensor_core_common.cuh"

namespace gdr2::cuda::detail {
namespace {
using namespace tc;

constexpr int kVMax = 128;                 // largest V of the tensor-core backward
constexpr int kGS = kKMax + 1;             // row stride of the fp32 G [64][129] (log2 units)
constexpr int kDT = 32;                    // key channels per tile of the score VJPs
constexpr int kTS = kDT + 4;               // fp32 [64][36] tile row stride (even: accumulators store column pairs)
constexpr int kDB = kDT + 8;               // bf16 [96][40] prescaled operand row stride
constexpr int kRow = kC * kEB * 2;         // bf16 [64][136]: 17408
constexpr int kSq = kC * kAB * 2;          // bf16 [64][72]: 9216
constexpr int kSqF = kC * kSS * 4;         // fp32 [64][68]: 17408
constexpr int kStageBytes = kWarps * 16 * kStage * 4;  // 10240
constexpr int kTileF = kC * kTS * 4;       // fp32 [64][36]: 9216
constexpr int kPre = 96 * kDB * 2;         // bf16 [96][40]: 7680
constexpr int kGradThreads = 512;          // the chunk-gradient kernel: 16 warps (one block per SM; more warps to
constexpr int kGradWarps = kGradThreads / 32;  // hide the latency of its dependent FFMA / exp chains)

// What the state-gradient kernel leaves for the chunk-gradient kernel. Rows are tokens (flattened B*T).
struct StateGradients {
  float* x = nullptr;       // [BT, HV, KP]  dQgamma = scale dO S_0^T (of the unscaled Qgamma)
  float* dkt = nullptr;     // [BT, HV, KP]  dKtail = R dS^T
  bf16* dy = nullptr;       // [BT, HV, KP]  dY = -dR S_0^T
  bf16* r = nullptr;        // [BT, HV, VP]  R = U - Y S_0 (written by phase B)
  bf16* dr = nullptr;       // [BT, HV, VP]  dR = Aqk^T dO + Ktail dS (written by phase C)
  float* daqk = nullptr;    // [BT, HV, 64]  dAqk = scale dO R^T on s <= r, zero above
  float* dglast = nullptr;  // [chunks, HV, KP] gamma_C rowsum(dS * S_0)
};

// Stores a 16 x 16 fp32 tile staged with row stride kStage, times `factor`, to fp32 rows of global memory
// (row i to dst(i), 16 floats; rows >= rows skipped): lane -> row lane / 2, 8 floats as two 16-byte stores.
template <class RowPtr>
__device__ __forceinline__ void store_tile_f32(const float* stage, float factor, int rows, RowPtr dst, int lane) {
  const int i = lane >> 1, j0 = (lane & 1) * 8;
  if (i >= rows) return;
  const float* src = stage + i * kStage + j0;
  float* out = dst(i) + j0;
  reinterpret_cast<float4*>(out)[0] = make_float4(factor * src[0], factor * src[1], factor * src[2], factor * src[3]);
  reinterpret_cast<float4*>(out)[1] = make_float4(factor * src[4], factor * src[5], factor * src[6], factor * src[7]);
}

// ---- phase D, kernel 1: the products with S_0 and dS ------------------------------------------------------------
// One block per (chunk, value head, part of the key rows): R and dR come from phases B and C (bf16, as their
// products used them); S_0 and dS (fp32) become bf16 operands here. With K split in two parts (KP % 32 == 0,
// KP > 64) a block holds 64 key rows and two blocks fit an SM.
struct StateGradLayout {  // byte offsets in dynamic shared memory; `rows` key rows of S_0 and dS per block
  int s0, ds, dout, r, dr, a, stage, bytes;
  __host__ __device__ explicit StateGradLayout(int rows) {
    s0 = 0;                          // S_0 bf16 [rows][136]
    ds = s0 + rows * kEB * 2;        // dS  bf16 [rows][136]
    dout = ds + rows * kEB * 2;      // dO  bf16 [64][136] (unscaled; scale is applied to X and dAqk)
    r = dout + kRow;                 // R   bf16 [64][136]
    dr = r + kRow;                   // dR  bf16 [64][136]
    a = dr + kRow;                   // A   bf16 [64][72]
    stage = a + kSq;                 // per-warp fp32 [16][20]
    bytes = stage + kStageBytes;     // rows = 64: 106496 (two blocks per SM); rows = 128: 141312
  }
};

template <class T>
__global__ void __launch_bounds__(kThreads, 2)
tc_state_gradients_kernel(const T* __restrict__ dout, const T* __restrict__ v, const T* __restrict__ w,
                          T* __restrict__ dv, T* __restrict__ dw, const bf16* __restrict__ states,
                          const bf16* __restrict__ dstates, const std::int32_t* __restrict__ cu_seqlens, int N,
                          int T_, int H, int HV, int K, int V, int KP, int VP, float scale, PrepareWorkspace pw,
                          StateGradients sg, bool vector_io) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int rows = KP / gridDim.z, d_begin = rows * blockIdx.z;  // this block's key rows [d_begin, d_begin + rows)
  const bool first_part = blockIdx.z == 0;                        // also computes dAqk and dZ (dv, dw)
  const StateGradLayout L(rows);
  bf16* S0b = reinterpret_cast<bf16*>(smem + L.s0);
  bf16* dSb = reinterpret_cast<bf16*>(smem + L.ds);
  bf16* dOb = reinterpret_cast<bf16*>(smem + L.dout);
  bf16* Rb = reinterpret_cast<bf16*>(smem + L.r);
  bf16* dRb = reinterpret_cast<bf16*>(smem + L.dr);
  bf16* Ab = reinterpret_cast<bf16*>(smem + L.a);

  __shared__ Slot slot_shared;
  if (threadIdx.x == 0) slot_shared = find_slot(cu_seqlens, N, T_, blockIdx.x);
  __syncthreads();
  const Slot chunk = slot_shared;
  if (chunk.len <= 0) return;
  const int hv = blockIdx.y, h = hv / (HV / H), tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int len = chunk.len, nk = rows / 16, nv = VP / 16;
  const std::int64_t slot = blockIdx.x, t0 = chunk.t0;
  float* stage = reinterpret_cast<float*>(smem + L.stage) + warp * 16 * kStage;
  auto key_row = [&](int r) { return (t0 + r) * H + h; };    // row of a [BT, H, .] tensor
  auto val_row = [&](int r) { return (t0 + r) * HV + hv; };  // row of a [BT, HV, .] tensor

  async_rows<kVMax / 8>(Rb, kEB, sg.r + val_row(0) * VP, std::int64_t(HV) * VP, len, VP / 8, tid);
  async_rows<kVMax / 8>(dRb, kEB, sg.dr + val_row(0) * VP, std::int64_t(HV) * VP, len, VP / 8, tid);
  async_rows<kC / 8>(Ab, kAB, pw.a + key_row(0) * kC, std::int64_t(H) * kC, len, kC / 8, tid);
  // This block's rows of S_0 and dS (bf16 [KP][VP] from phases B and C; columns past VP zero-filled).
  const bf16* S0g = states + (static_cast<std::size_t>(slot) * HV + hv) * KP * VP + static_cast<std::size_t>(d_begin) * VP;
  const bf16* dSg = dstates + (static_cast<std::size_t>(slot) * HV + hv) * KP * VP + static_cast<std::size_t>(d_begin) * VP;
  for (int i = tid; i < rows * (kVMax / 8); i += kThreads) {
    const int row = i / (kVMax / 8), piece = i % (kVMax / 8);
    const bool ok = 8 * piece < VP;
    __pipeline_memcpy_async(S0b + row * kEB + 8 * piece, ok ? S0g + row * VP + 8 * piece : S0g, 16, ok ? 0 : 16);
    __pipeline_memcpy_async(dSb + row * kEB + 8 * piece, ok ? dSg + row * VP + 8 * piece : dSg, 16, ok ? 0 : 16);
  }
  __pipeline_commit();
  {  // dO, pieces of 8 columns (16-byte loads with vector_io), all requested before the first is used
    alignas(16) T piece[4][8];
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      const int i = tid + kThreads * m, r = i >> 4, c = 8 * (i & 15);
      const int valid = r < len ? max(0, min(8, V - c)) : 0;
      load8(piece[m], dout + (valid > 0 ? val_row(r) * V + c : 0), valid, vector_io);
    }
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      const int i = tid + kThreads * m, r = i >> 4, c = 8 * (i & 15);
      float x[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) x[j] = to_float(piece[m][j]);
      store8_bf16(dOb + r * kEB + c, x);
    }
  }
  __pipeline_wait_prior(0);
  __syncthreads();
  // dG_last = gamma_C rowsum(dS * S_0) from the bf16 operands (fp32 products and sum): a warp per key row.
  for (int row = warp; row < rows; row += kWarps) {
    const int d = d_begin + row;
    float acc = 0.0f;
#pragma unroll
    for (int m = 0; m < kVMax / 32; ++m) {
      const int j = lane + 32 * m;
      acc = fmaf(__bfloat162float(dSb[row * kEB + j]), __bfloat162float(S0b[row * kEB + j]), acc);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) sg.dglast[(slot * HV + hv) * KP + d] = d < K ? pw.gamma_c[(slot * H + h) * KP + d] * acc : 0.0f;
  }

  // X = dQgamma = scale dO S_0^T, dY = -dR S_0^T, dKtail = R dS^T (64 x rows, reductions over V).
  for (int t = warp; t < 4 * nk; t += kWarps) {
    const int rb = t / nk, cb = t % nk;
    Acc16 acc_x, acc_y, acc_k;
    acc_x.zero();
    acc_y.zero();
    acc_k.zero();
    for (int kb = 0; kb < nv; ++kb) {
      Frag16 o, dr, r;
      Frag16 s0t, dst;  // (j, d) = S_0[d][j], dS[d][j]
      load_b_transposed(s0t, S0b + 16 * cb * kEB + 16 * kb, kEB, lane);
      load_b_transposed(dst, dSb + 16 * cb * kEB + 16 * kb, kEB, lane);
      load_a(o, dOb + 16 * rb * kEB + 16 * kb, kEB, lane);
      load_a(dr, dRb + 16 * rb * kEB + 16 * kb, kEB, lane);
      load_a(r, Rb + 16 * rb * kEB + 16 * kb, kEB, lane);
      mma(acc_x, o, s0t);
      mma(acc_y, dr, s0t);
      mma(acc_k, r, dst);
    }
    const int rows_left = len - 16 * rb;
    auto key_out = [&](auto* base) {
      return [=](int i) { return base + val_row(16 * rb + i) * KP + d_begin + 16 * cb; };
    };
    acc_x.store(stage, kStage, lane);
    __syncwarp();
    store_tile_f32(stage, scale, rows_left, key_out(sg.x), lane);
    __syncwarp();
    acc_k.store(stage, kStage, lane);
    __syncwarp();
    store_tile_f32(stage, 1.0f, rows_left, key_out(sg.dkt), lane);
    __syncwarp();
    acc_y.negate();
    acc_y.store(stage, kStage, lane);
    __syncwarp();
    store_tile_bf16(stage, rows_left, key_out(sg.dy), lane);
    __syncwarp();
  }
  if (!first_part) return;
  // dAqk = scale dO R^T on s <= r (blocks above the diagonal: zeros).
  for (int t = warp; t < 16; t += kWarps) {
    const int rb = t / 4, cb = t % 4;
    Acc16 acc;
    acc.zero();
    if (cb <= rb) mma_abt(acc, dOb + 16 * rb * kEB, kEB, Rb + 16 * cb * kEB, kEB, nv, lane);  // dO R^T
    acc.store(stage, kStage, lane);
    __syncwarp();
    for (int e = lane; e < 256; e += 32) {
      const int i = e >> 4, j = e & 15, r = 16 * rb + i, s = 16 * cb + j;
      if (r < len) sg.daqk[val_row(r) * kC + s] = s <= r ? scale * stage[i * kStage + j] : 0.0f;
    }
    __syncwarp();
  }
  // dZ = A^T dU = A^T dR (A lower triangular: (A^T)_{r, r2} needs r2 >= r); dw = dZ * v, dv = dZ * w.
  for (int t = warp; t < 4 * nv; t += kWarps) {
    const int rb = t / nv, cb = t % nv;
    Acc16 acc;
    acc.zero();
    mma_lower_transposed(acc, Ab, kAB, dRb, kEB, rb, 16 * cb, lane);
    acc.store(stage, kStage, lane);
    __syncwarp();
    {  // lane -> row lane / 2 of the tile, 8 columns: 16-byte loads and stores with vector_io
      const int i = lane >> 1, j0 = 8 * (lane & 1), r = 16 * rb + i, c = 16 * cb + j0;
      const int valid = r < len ? max(0, min(8, V - c)) : 0;
      const std::int64_t at = valid > 0 ? val_row(r) * V + c : 0;
      alignas(16) T vv[8], ww[8], out_w[8], out_v[8];
      load8(vv, v + at, valid, vector_io);
      load8(ww, w + at, valid, vector_io);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float dz = stage[i * kStage + j0 + j];
        out_w[j] = from_float<T>(dz * to_float(vv[j]));
        out_v[j] = from_float<T>(dz * to_float(ww[j]));
      }
      store8(dw + at, out_w, valid, vector_io);
      store8(dv + at, out_v, valid, vector_io);
    }
    __syncwarp();
  }
}

// Where the chunk-gradient kernel puts dq, dk, db and dg. With one value head per key head every element is
// written by exactly one block: stored directly (dq, dk, db in the input dtype). With grouped value heads the
// blocks of a group add into fp32 accumulators (zeroed before, converted to the dtype after).
template <class T>
struct KeyGradients {
  bool direct;
  T *dq, *dk, *db;                    // outputs (direct)
  float *dq_acc, *dk_acc, *db_acc;    // fp32 accumulators (grouped)
  float* dg;                          // fp32 output (accumulated when grouped)
  __device__ __forceinline__ void put(std::int64_t at, float q, float k, float b) const {
    if (direct) {
      dq[at] = from_float<T>(q);
      dk[at] = from_float<T>(k);
      db[at] = from_float<T>(b);
    } else {
      atomicAdd(dq_acc + at, q);
      atomicAdd(dk_acc + at, k);
      atomicAdd(db_acc + at, b);
    }
  }
  __device__ __forceinline__ void put_dg(std::int64_t at, float x) const {
    if (direct) dg[at] = x;
    else atomicAdd(dg + at, x);
  }
};

// ---- phase D, kernel 2: the chunk-local chain and the gated score VJPs ----------------------------------------
namespace chunk_layout {  // byte offsets in dynamic shared memory
constexpr int kDiag = kC * 17 * 4;         // fp32 diagonal 16 x 16 blocks [64][17]: row r, column s - 16 (r / 16)
constexpr int dy = 0;                      // dY bf16 [64][136]
constexpr int a = dy + kRow;               // A bf16 [64][72]
constexpr int dtb = a + kSq;               // dT bf16 [64][72]
constexpr int daqkb = dtb + kSq;           // dAqk bf16 [64][72], diagonal zero
constexpr int dtd = daqkb + kSq;           // dT, diagonal blocks fp32
constexpr int daqkd = dtd + round_up(kDiag, 128);  // dAqk, diagonal blocks fp32 (with the diagonal)
constexpr int stage = daqkd + round_up(kDiag, 128);  // per-warp fp32 [16][20], 16 warps
constexpr int region = stage + kGradWarps * 16 * kStage * 4;
// Region, first use: G fp32 [64][129]; Ebar, Z, dR bf16 [64][136]; dA fp32 [64][68]; dA and M bf16 [64][72].
constexpr int g = region, ebar = g + kC * kGS * 4, z = ebar + kRow, dr = z + kRow, da = dr + kRow, dab = da + kSqF,
              m = dab + kSq;
constexpr int end1 = m + kSq;
// Region, per key tile: G, q, k, e, b, dQgamma, dKtail fp32 [64][36]; Ks, Es, Qs bf16 [96][40];
// P, Pq, Q, Qk, dEbar fp32 [64][36].
constexpr int tg = region, tq = tg + kTileF, tk = tq + kTileF, te = tk + kTileF, tb = te + kTileF, tx = tb + kTileF,
              tdkt = tx + kTileF;
constexpr int ks = tdkt + kTileF, es = ks + kPre, qs = es + kPre;
constexpr int p = qs + kPre, pq = p + kTileF, q = pq + kTileF, qk = q + kTileF, debar = qk + kTileF;
constexpr int end2 = debar + kTileF;
constexpr int bytes = end1 > end2 ? end1 : end2;  // 207872 (one block per SM)
static_assert(bytes + 256 <= 227 * 1024, "the chunk-gradient kernel must fit an sm_90 block's shared memory");
}  // namespace chunk_layout

// Row offsets of the prescaled operands (96 rows each):
//   Ks_I (I = 1, 2, 3): rows s < 16 I,           k_s exp(G_16I - G_s)        at 0, 16, 48
//   Es_J, Qs_J (J = 0, 1, 2): rows r >= 16 (J + 1), e_r (q_r) exp(G_r - G_16(J+1))  at 0, 48, 80
__device__ __forceinline__ int ks_row_offset(int I) { return 8 * I * (I - 1); }
__device__ __forceinline__ int es_row_offset(int J) { return J == 0 ? 0 : J == 1 ? 48 : 80; }

// Eq. 18: G_r = sum_{i<=r} g_i per channel in units of log2(e), in place for the `count` channels of `G` (row
// stride ld, zeros past the chunk): the prepare kernel's fp32 scan operation for operation (8 lanes per channel, a
// shuffle scan over the 8 segments), so that every decay here equals the prepare kernel's.
template <int Threads>
__device__ __forceinline__ void scan_decays(float* G, int ld, int count, int tid) {
  for (int c0 = 0; c0 < count; c0 += Threads / 8) {
    const int c = c0 + (tid >> 3), seg = tid & 7, r0 = seg * 8;
    const bool ok = c < count;
    float prefix[8], acc = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) prefix[i] = (acc += ok ? G[(r0 + i) * ld + c] : 0.0f);
    float offset = acc;
#pragma unroll
    for (int delta = 1; delta < 8; delta *= 2) {
      const float other = __shfl_up_sync(0xffffffffu, offset, delta, 8);
      if (seg >= delta) offset += other;
    }
    offset -= acc;
    if (ok) {
#pragma unroll
      for (int i = 0; i < 8; ++i) G[(r0 + i) * ld + c] = (offset + prefix[i]) * kLog2e;
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kGradThreads, 1)
tc_chunk_gradients_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                          const float* __restrict__ g, const T* __restrict__ b, const T* __restrict__ w,
                          const std::int32_t* __restrict__ cu_seqlens, int N, int T_, int H, int HV, int K, int V,
                          int KP, int VP, PrepareWorkspace pw, StateGradients sg, KeyGradients<T> out,
                          bool vector_loads) {
  namespace L = chunk_layout;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* dYb = reinterpret_cast<bf16*>(smem + L::dy);
  bf16* Ab = reinterpret_cast<bf16*>(smem + L::a);
  bf16* dTb = reinterpret_cast<bf16*>(smem + L::dtb);
  bf16* dAqkb = reinterpret_cast<bf16*>(smem + L::daqkb);
  float* dTd = reinterpret_cast<float*>(smem + L::dtd);      // dT_rs, s in r's block: dTd[r * 17 + s % 16]
  float* dAqkd = reinterpret_cast<float*>(smem + L::daqkd);  // dAqk_rs likewise
  float* G = reinterpret_cast<float*>(smem + L::g);
  bf16* Eb = reinterpret_cast<bf16*>(smem + L::ebar);
  bf16* Zb = reinterpret_cast<bf16*>(smem + L::z);
  bf16* dRb = reinterpret_cast<bf16*>(smem + L::dr);
  float* sdA = reinterpret_cast<float*>(smem + L::da);
  bf16* dAb = reinterpret_cast<bf16*>(smem + L::dab);
  bf16* Mb = reinterpret_cast<bf16*>(smem + L::m);
  float* tG = reinterpret_cast<float*>(smem + L::tg);
  float* tq = reinterpret_cast<float*>(smem + L::tq);
  float* tk = reinterpret_cast<float*>(smem + L::tk);
  float* te = reinterpret_cast<float*>(smem + L::te);
  float* tb = reinterpret_cast<float*>(smem + L::tb);
  float* tX = reinterpret_cast<float*>(smem + L::tx);
  float* tdKt = reinterpret_cast<float*>(smem + L::tdkt);
  bf16* Ks = reinterpret_cast<bf16*>(smem + L::ks);
  bf16* Es = reinterpret_cast<bf16*>(smem + L::es);
  bf16* Qs = reinterpret_cast<bf16*>(smem + L::qs);
  float* sP = reinterpret_cast<float*>(smem + L::p);
  float* sPq = reinterpret_cast<float*>(smem + L::pq);
  float* sQ = reinterpret_cast<float*>(smem + L::q);
  float* sQk = reinterpret_cast<float*>(smem + L::qk);
  float* sdE = reinterpret_cast<float*>(smem + L::debar);

  __shared__ Slot slot_shared;
  if (threadIdx.x == 0) slot_shared = find_slot(cu_seqlens, N, T_, blockIdx.x);
  __syncthreads();
  const Slot chunk = slot_shared;
  if (chunk.len <= 0) return;
  const int hv = blockIdx.y, h = hv / (HV / H), tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int len = chunk.len, last = len - 1, nk = KP / 16, nv = VP / 16;
  const std::int64_t slot = blockIdx.x, t0 = chunk.t0;
  float* stage = reinterpret_cast<float*>(smem + L::stage) + warp * 16 * kStage;
  auto key_row = [&](int r) { return (t0 + r) * H + h; };
  auto val_row = [&](int r) { return (t0 + r) * HV + hv; };
  async_rows<kKMax / 8, kGradThreads>(dYb, kEB, sg.dy + val_row(0) * KP, std::int64_t(HV) * KP, len, KP / 8, tid);
  async_rows<kVMax / 8, kGradThreads>(dRb, kEB, sg.dr + val_row(0) * VP, std::int64_t(HV) * VP, len, VP / 8, tid);
  async_rows<kC / 8, kGradThreads>(Ab, kAB, pw.a + key_row(0) * kC, std::int64_t(H) * kC, len, kC / 8, tid);
  __pipeline_commit();
  // Every global input of the chunk is requested at once, in pieces of 8 consecutive elements (16-byte loads when
  // the inputs allow: vector_loads), into registers: one block per SM hides little latency. Thread -> pieces
  // i = tid + 512 m of the 64 x 128 tiles (row i / 16, columns 8 (i % 16) ..) and i = tid of the 64 x 64 dAqk.
  alignas(16) float g_in[2][8], daqk_in[8];
  alignas(16) T w_in[2][8], v_in[2][8], b_in[2][8], k_in[2][8];
#pragma unroll
  for (int m = 0; m < 2; ++m) {
    const int i = tid + kGradThreads * m, r = i >> 4, c = 8 * (i & 15);
    const int key_valid = r < len ? max(0, min(8, K - c)) : 0, val_valid = r < len ? max(0, min(8, V - c)) : 0;
    const std::int64_t key_at = key_valid > 0 ? key_row(r) * K + c : 0, val_at = val_valid > 0 ? val_row(r) * V + c : 0;
    load8(g_in[m], g + key_at, key_valid, vector_loads);
    load8(b_in[m], b + key_at, key_valid, vector_loads);
    load8(k_in[m], k + key_at, key_valid, vector_loads);
    load8(w_in[m], w + val_at, val_valid, vector_loads);
    load8(v_in[m], v + val_at, val_valid, vector_loads);
  }
  {
    const int r = tid >> 3, c = 8 * (tid & 7);
    load8(daqk_in, sg.daqk + (r < len ? val_row(r) * kC + c : 0), r < len ? 8 : 0, true);  // (our workspace)
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int s = c + j;
      if ((s >> 4) == (r >> 4)) dAqkd[r * 17 + (s & 15)] = daqk_in[j];
      daqk_in[j] = s == r ? 0.0f : daqk_in[j];  // the diagonal is added elementwise
    }
    store8_bf16(dAqkb + r * kAB + c, daqk_in);
  }
#pragma unroll
  for (int m = 0; m < 2; ++m) {
    const int i = tid + kGradThreads * m, r = i >> 4, c = 8 * (i & 15);
    float z[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      G[r * kGS + c + j] = g_in[m][j];
      z[j] = to_float(w_in[m][j]) * to_float(v_in[m][j]);  // Z = W * V (the prepare kernel's rounding)
    }
    store8_bf16(Zb + r * kEB + c, z);
  }
  __syncthreads();
  scan_decays<kGradThreads>(G, kGS, kKMax, tid);
  __syncthreads();
  // Ebar_r = gamma_r b_r k_r as a bf16 operand (the prepare kernel's rounding).
#pragma unroll
  for (int m = 0; m < 2; ++m) {
    const int i = tid + kGradThreads * m, r = i >> 4, c = 8 * (i & 15);
    float e[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) e[j] = fast_exp2(G[r * kGS + c + j]) * (to_float(b_in[m][j]) * to_float(k_in[m][j]));
    store8_bf16(Eb + r * kEB + c, e);
  }
  __pipeline_wait_prior(0);
  __syncthreads();

  // dA = dU Z^T + dY Ebar^T (dU = dR), strictly lower (A - I is strictly lower): blocks on and below the diagonal.
  for (int t = warp; t < 16; t += kGradWarps) {
    const int rb = t / 4, cb = t % 4;
    Acc16 acc;
    acc.zero();
    if (cb <= rb) {
      mma_abt(acc, dRb + 16 * rb * kEB, kEB, Zb + 16 * cb * kEB, kEB, nv, lane);  // dU Z^T
      mma_abt(acc, dYb + 16 * rb * kEB, kEB, Eb + 16 * cb * kEB, kEB, nk, lane);  // dY Ebar^T
    }
    acc.store(sdA + 16 * rb * kSS + 16 * cb, kSS, lane);
  }
  __syncthreads();
  for (int i = tid; i < kC * kC; i += kGradThreads) {
    const int r = i / kC, c = i % kC;
    dAb[r * kAB + c] = __float2bfloat16_rn(c < r && r < len ? sdA[r * kSS + c] : 0.0f);
  }
  __syncthreads();
  // dT = -tril(A^T dA A^T, -1): M = A^T dA (M_rj = sum_i A_ir dA_ij, i >= r and i > j), then M A^T.
  for (int t = warp; t < 16; t += kGradWarps) {
    const int rb = t / 4, cb = t % 4;
    Acc16 acc;
    acc.zero();
    const int k0 = max(rb, cb);  // A^T dA: A lower triangular, dA strictly lower
    mma_atb(acc, Ab + 16 * k0 * kAB + 16 * rb, kAB, dAb + 16 * k0 * kAB + 16 * cb, kAB, 4 - k0, lane);
    acc.store(stage, kStage, lane);
    __syncwarp();
    for (int e = lane; e < 256; e += 32)
      Mb[(16 * rb + (e >> 4)) * kAB + 16 * cb + (e & 15)] = __float2bfloat16_rn(stage[(e >> 4) * kStage + (e & 15)]);
    __syncwarp();
  }
  __syncthreads();
  for (int t = warp; t < 16; t += kGradWarps) {  // dT = -(M A^T) on s < r, (M A^T)_rs = sum_{j <= s} M_rj A_sj
    const int rb = t / 4, cb = t % 4;
    Acc16 acc;
    acc.zero();
    if (cb <= rb) mma_abt(acc, Mb + 16 * rb * kAB, kAB, Ab + 16 * cb * kAB, kAB, cb + 1, lane);  // M A^T, A lower
    acc.store(stage, kStage, lane);
    __syncwarp();
    for (int e = lane; e < 256; e += 32) {
      const int i = e >> 4, j = e & 15, r = 16 * rb + i, c = 16 * cb + j;
      const float x = c < r && r < len ? -stage[i * kStage + j] : 0.0f;
      dTb[r * kAB + c] = __float2bfloat16_rn(x);
      if (cb == rb) dTd[r * 17 + j] = x;
    }
    __syncwarp();
  }
  __syncthreads();  // the first-use region (G, Ebar, Z, dR, dA, M) is dead from here

  for (int d0 = 0; d0 < KP; d0 += kDT) {
#pragma unroll 4
    for (int i = tid; i < kC * kDT; i += kGradThreads) {
      const int r = i / kDT, dd = i % kDT, d = d0 + dd;
      const bool ok = r < len && d < K;
      const std::int64_t at = key_row(r) * K + d, ws_at = val_row(r) * KP + d;
      const float kv = ok ? to_float(k[at]) : 0.0f, bv = ok ? to_float(b[at]) : 0.0f;
      tG[r * kTS + dd] = ok ? g[at] : 0.0f;
      tq[r * kTS + dd] = ok ? to_float(q[at]) : 0.0f;
      tk[r * kTS + dd] = kv;
      tb[r * kTS + dd] = bv;
      te[r * kTS + dd] = bv * kv;  // e = b * k
      tX[r * kTS + dd] = ok ? sg.x[ws_at] : 0.0f;
      tdKt[r * kTS + dd] = ok ? sg.dkt[ws_at] : 0.0f;
    }
    __syncthreads();
    scan_decays<kGradThreads>(tG, kTS, kDT, tid);
    __syncthreads();
    // Prescaled operands; every exp argument is <= 0 (G is non-increasing along the chunk for g <= 0).
    for (int i = tid; i < kC * kDT; i += kGradThreads) {
      const int r = i / kDT, dd = i % kDT;
      const float Gr = tG[r * kTS + dd], kv = tk[r * kTS + dd], ev = te[r * kTS + dd], qv = tq[r * kTS + dd];
#pragma unroll
      for (int I = 1; I < 4; ++I)
        if (r < 16 * I) Ks[(ks_row_offset(I) + r) * kDB + dd] = __float2bfloat16_rn(kv * fast_exp2(tG[16 * I * kTS + dd] - Gr));
#pragma unroll
      for (int J = 0; J < 3; ++J) {
        const int p = 16 * (J + 1);
        if (r >= p) {
          const float x = fast_exp2(Gr - tG[p * kTS + dd]);
          Es[(es_row_offset(J) + r - p) * kDB + dd] = __float2bfloat16_rn(ev * x);
          Qs[(es_row_offset(J) + r - p) * kDB + dd] = __float2bfloat16_rn(qv * x);
        }
      }
    }
    __syncthreads();
    // Tensor-core tasks (32, two per warp): the off-diagonal blocks of P, Pq (rows of block I >= 1), of Q, Qk
    // (rows of block J <= 2), and dEbar = A^T dY for this tile.
    for (int task = warp; task < 32; task += kGradWarps) {
      const int nb = task & 1, kind = task >> 1;  // kind 0-2: P, 3-5: Pq, 6-8: Q, 9-11: Qk, 12-15: dEbar
      Acc16 acc;
      acc.zero();
      float* out;
      if (kind < 6) {  // P_I = dT[I, <I] Ks_I, Pq_I = dAqk[I, <I] Ks_I (then times exp(G_r - G_16I))
        const int I = kind % 3 + 1;
        const bf16* left = kind < 3 ? dTb : dAqkb;
        mma_ab(acc, left + 16 * I * kAB, kAB, Ks + ks_row_offset(I) * kDB + 16 * nb, kDB, I, lane);
        out = (kind < 3 ? sP : sPq) + 16 * I * kTS + 16 * nb;
      } else if (kind < 12) {  // Q_J = dT[>J, J]^T Es_J, Qk_J = dAqk[>J, J]^T Qs_J (then times exp(G_16(J+1) - G_s))
        const int J = kind % 3;
        const bf16* left = kind < 9 ? dTb : dAqkb;
        const bf16* right = kind < 9 ? Es : Qs;
        // (i, kk) of the left operand = M[16 (J + 1 + kb) + kk][16 J + i]
        mma_atb(acc, left + 16 * (J + 1) * kAB + 16 * J, kAB, right + es_row_offset(J) * kDB + 16 * nb, kDB, 3 - J, lane);
        out = (kind < 9 ? sQ : sQk) + 16 * J * kTS + 16 * nb;
      } else {  // dEbar = A^T dY, row block rb
        const int rb = kind - 12;
        mma_lower_transposed(acc, Ab, kAB, dYb, kEB, rb, d0 + 16 * nb, lane);
        out = sdE + 16 * rb * kTS + 16 * nb;
      }
      acc.store(out, kTS, lane);
    }
    __syncthreads();
    // Per (r, d): the diagonal blocks in FFMA with the exact decay (measured: on tensor cores with the block's
    // middle row as pivot they are no faster here and put 4x the error into dg, whose rows cancel), and the
    // elementwise rest of section 6 (chunk_backward_program.cuh, chunk_gradients, has the derivation of every term):
    //   de = gamma dEbar + P;  dq = (Pq + dAqk_rr k) + gamma X;  dk = Q + (Qk + dAqk_rr q) + tail dKtail + de b;
    //   db = de k;  dG_r = gamma e dEbar + e P - k Q + q Pq - k Qk + gamma q X (in double; the diagonal pair
    //   q dAqk_rr k - k dAqk_rr q cancels exactly and is left out: Pq and Qk exclude the diagonal).
    for (int i = tid; i < kC * kDT; i += kGradThreads) {
      const int r = i / kDT, dd = i % kDT, d = d0 + dd, at = r * kTS + dd;
      if (r >= len || d >= K) {
        sP[at] = sQ[at] = sQk[at] = 0.0f;
        continue;
      }
      const int blk = r >> 4, first = 16 * blk, next = first + 16;
      const float Gr = tG[at];
      float P = 0.0f, Pq = 0.0f, Q = 0.0f, Qk = 0.0f;
      if (blk > 0) {  // off the diagonal, pivot 16 blk
        const float x = fast_exp2(Gr - tG[first * kTS + dd]);
        P = x * sP[at];
        Pq = x * sPq[at];
      }
      if (blk < 3) {  // off the diagonal, pivot 16 (blk + 1)
        const float x = fast_exp2(tG[next * kTS + dd] - Gr);
        Q = x * sQ[at];
        Qk = x * sQk[at];
      }
      for (int c = first; c < r; ++c) {
        const float decayed_key = tk[c * kTS + dd] * fast_exp2(Gr - tG[c * kTS + dd]);
        P = fmaf(dTd[r * 17 + c - first], decayed_key, P);
        Pq = fmaf(dAqkd[r * 17 + c - first], decayed_key, Pq);
      }
      const int stop = min(next, len);
      for (int r2 = r + 1; r2 < stop; ++r2) {
        const float x = fast_exp2(tG[r2 * kTS + dd] - Gr);
        Q = fmaf(dTd[r2 * 17 + r - first] * te[r2 * kTS + dd], x, Q);
        Qk = fmaf(dAqkd[r2 * 17 + r - first] * tq[r2 * kTS + dd], x, Qk);
      }
      const float gamma = fast_exp2(Gr), tail = fast_exp2(tG[last * kTS + dd] - Gr);
      const float qv = tq[at], kv = tk[at], e = te[at], bv = tb[at];
      const float X = tX[at], dKt = tdKt[at], dEbar = sdE[at], diag = dAqkd[r * 17 + (r & 15)];
      const float de = gamma * dEbar + P;
      const float dqv = (Pq + diag * kv) + gamma * X;
      const float dkv = Q + (Qk + diag * qv) + tail * dKt + de * bv;
      out.put(key_row(r) * K + d, dqv, dkv, de * kv);
      sP[at] = static_cast<float>(double(gamma * e) * dEbar + double(e) * P - double(kv) * Q + double(qv) * Pq -
                                  double(kv) * Qk + double(gamma * qv) * X);  // dG_r
      sQ[at] = tail * kv;  // Ktail_r
      sQk[at] = dKt;
    }
    __syncthreads();
    // dg_i = dG_last + sum_{r >= i} dG_r + sum_{r < i} Ktail_r dKtail_r (the Ktail pairs that straddle i), in
    // double (see chunk_gradients): a warp per channel, lane l holding rows 2l and 2l + 1, a suffix scan of dG and
    // an exclusive prefix scan of the pairs across the lanes.
    for (int dd = warp; dd < kDT; dd += kGradWarps) {
      const int d = d0 + dd, r0 = 2 * lane, r1 = r0 + 1;
      if (d >= K) continue;
      const double a0 = r0 < len ? double(sP[r0 * kTS + dd]) : 0.0, a1 = r1 < len ? double(sP[r1 * kTS + dd]) : 0.0;
      const double t0p = r0 < len ? double(sQ[r0 * kTS + dd]) * sQk[r0 * kTS + dd] : 0.0;
      const double t1p = r1 < len ? double(sQ[r1 * kTS + dd]) * sQk[r1 * kTS + dd] : 0.0;
      double suffix = a0 + a1, prefix = t0p + t1p;  // inclusive scans over the lanes: suffix from the top, prefix from 0
#pragma unroll
      for (int o = 1; o < 32; o *= 2) {
        const double below = __shfl_down_sync(0xffffffffu, suffix, o), above = __shfl_up_sync(0xffffffffu, prefix, o);
        if (lane + o < 32) suffix += below;
        if (lane >= o) prefix += above;
      }
      const double glast = sg.dglast[(slot * HV + hv) * KP + d];
      const double before = prefix - (t0p + t1p);  // sum of the pairs in rows < r0
      if (r0 < len) out.put_dg(key_row(r0) * K + d, static_cast<float>(glast + suffix + before));
      if (r1 < len) out.put_dg(key_row(r1) * K + d, static_cast<float>(glast + (suffix - a0) + (before + t0p)));
    }
    __syncthreads();
  }
}

// ---- phase C: the chunk-end state gradients, chunks in reverse -----------------------------------------------
template <int VT>
struct DStateLayout {  // byte offsets in dynamic shared memory
  static constexpr int SF = VT + 4;  // fp32 row stride
  static constexpr int SB = VT + 8;  // bf16 row stride
  static constexpr int ds32 = 0;                                     // dS fp32 [128][SF]: dht in, dh0 out (dS lives in registers)
  static constexpr int dsb = ds32 + round_up(kKMax * SF * 4, 128);   // dS bf16 [128][SB]
  static constexpr int kt = dsb + round_up(kKMax * SB * 2, 128);     // Ktail [64][136]
  static constexpr int qg = kt + kRow;                               // scale Qgamma [64][136]
  static constexpr int y = qg + kRow;                                // Y [64][136]
  static constexpr int aq = y + kRow;                                // scale Aqk [64][72]
  static constexpr int dout = aq + kSq;                              // dO bf16 [64][SB] (unscaled)
  static constexpr int drn = dout + round_up(kC * SB * 2, 128);      // -dR bf16 [64][SB]
  static constexpr int gam = drn + round_up(kC * SB * 2, 128);       // gamma_C fp32 [128]
  static constexpr int stage = gam + kKMax * 4;
  static constexpr int bytes = stage + kStageBytes;                  // VT = 32: 111104 (two blocks per SM)
};

// One block per (value tile, value head, sequence): dS = dht, then per chunk from the last:
//   store dS (the gradient of this chunk's end state), dR = Aqk^T dO + Ktail dS,
//   dS <- Diag(gamma_C) dS + Qgamma^T dO - Y^T dR (spec section 6; scale is inside Aqk and Qgamma),
// and dh0 = dS at the end. The fp32 master of dS lives in registers, with a bf16 operand copy in shared memory.
// Products: mma.sync with ldmatrix operands (mma_sync.cuh). NK: KP / 16 when known at compile time (8: K in
// 113..128), else 0 (read from KP).
template <class T, int VT, int NK>
__global__ void __launch_bounds__(kThreads, 2)
tc_dstate_kernel(const T* __restrict__ dout, const float* __restrict__ dht, float* __restrict__ dh0,
                 const std::int32_t* __restrict__ cu_seqlens, int T_, int H, int HV, int K, int V, int KP,
                 int VP, PrepareWorkspace pw, bf16* __restrict__ dstates, bf16* __restrict__ dr_out) {
  using L = DStateLayout<VT>;
  constexpr int SF = L::SF, SB = L::SB, nv = VT / 16;
  extern __shared__ __align__(128) unsigned char smem[];
  float* dS32 = reinterpret_cast<float*>(smem + L::ds32);
  bf16* dSb = reinterpret_cast<bf16*>(smem + L::dsb);
  bf16* Kt = reinterpret_cast<bf16*>(smem + L::kt);
  bf16* Qg = reinterpret_cast<bf16*>(smem + L::qg);
  bf16* Yb = reinterpret_cast<bf16*>(smem + L::y);
  bf16* Aq = reinterpret_cast<bf16*>(smem + L::aq);
  bf16* dOb = reinterpret_cast<bf16*>(smem + L::dout);
  bf16* dRn = reinterpret_cast<bf16*>(smem + L::drn);
  float* gam = reinterpret_cast<float*>(smem + L::gam);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int c0 = blockIdx.x * VT, hv = blockIdx.y, n = blockIdx.z, h = hv / (HV / H), nk = NK > 0 ? NK : KP / 16;
  float* stage = reinterpret_cast<float*>(smem + L::stage) + warp * 16 * kStage;
  const SeqRange seq = sequence_range(cu_seqlens, n, T_);
  __shared__ std::int64_t slot_base_shared;  // the first chunk slot of sequence n
  if (tid == 0) slot_base_shared = first_slot(cu_seqlens, n, T_);
  const std::size_t state_base = (static_cast<std::size_t>(n) * HV + hv) * K * V;
  for (int i = tid; i < kKMax * VT; i += kThreads) {  // dS = dht (zeros without it; padding zero)
    const int d = i / VT, c = i % VT;
    const float x = dht != nullptr && d < K && c0 + c < V ? dht[state_base + static_cast<std::size_t>(d) * V + c0 + c] : 0.0f;
    dS32[d * SF + c] = x;
    dSb[d * SB + c] = __float2bfloat16_rn(x);
  }
  __syncthreads();
  // The fp32 master of dS lives in registers: warp w owns the 16 x 16 tiles t = w + 8 j (j < nv) of the nk x nv
  // tiles, as accumulators (mma_sync.cuh) that the update accumulates into.
  const int tiles = nk * nv;
  Acc16 grad[nv];
#pragma unroll
  for (int j = 0; j < nv; ++j) {
    const int t = warp + kWarps * j;
    if (t < tiles) {
      const float* tile = dS32 + 16 * (t / nv) * SF + 16 * (t % nv);
      grad[j].load(tile, SF, lane);
    }
  }
  const std::int64_t slot_base = slot_base_shared;
  const int chunks = static_cast<int>((seq.eos - seq.bos + kC - 1) / kC);
  auto chunk_t0 = [&](int ci) { return seq.bos + static_cast<std::int64_t>(ci) * kC; };
  auto key_tile = [&](bf16* dst, const bf16* ws, int ci) {  // rows of a [BT, H, KP] workspace tensor
    const std::int64_t t0 = chunk_t0(ci);
    async_rows<kKMax / 8>(dst, kEB, ws + (t0 * H + h) * static_cast<std::int64_t>(KP), std::int64_t(H) * KP,
                          chunk_length(t0, seq.eos), KP / 8, tid);
  };
  // Two stages per chunk, dR then the dS update, and two cp.async groups, each issued when the stage that read the
  // later chunk's copy is over, so that it loads while the other stage computes:
  //   group 1 (Ktail, Aqk) of chunk c - 1: issued when the update of c starts, needed by dR of c - 1;
  //   group 2 (Qgamma, Y, gamma_C) of c:   issued when dR of c starts, needed by the update of c.
  // dO of chunk c - 1 is read into registers while the update of c runs (one 8-column piece per thread at VT <= 32).
  auto issue_group_1 = [&](int ci) {
    if (ci >= 0) {
      const std::int64_t t0 = chunk_t0(ci);
      key_tile(Kt, pw.ktail, ci);
      async_rows<kC / 8>(Aq, kAB, pw.aqk + (t0 * H + h) * kC, std::int64_t(H) * kC, chunk_length(t0, seq.eos), kC / 8, tid);
    }
    __pipeline_commit();
  };
  auto issue_group_2 = [&](int ci) {
    key_tile(Qg, pw.qg, ci);
    key_tile(Yb, pw.y, ci);
    for (int i = tid; i < KP / 4; i += kThreads)
      __pipeline_memcpy_async(gam + 4 * i, pw.gamma_c + ((slot_base + ci) * H + h) * KP + 4 * i, 16);
    __pipeline_commit();
  };
  static_assert(kC * VT / 8 <= kThreads, "one dO piece per thread");
  const int piece_row = tid / (VT / 8), piece_col = 8 * (tid % (VT / 8));  // this thread's dO piece
  uint4 dout_next;  // 8 bf16 values (the operand rounding), 4 registers
  auto load_dout = [&](int ci) {  // dO rows of chunk ci, zeros past the sequence and past V
    const std::int64_t t0 = chunk_t0(ci);
    const int c = c0 + piece_col;
    const bool row_ok = piece_row < chunk_length(t0, seq.eos);
    const T* src = dout + ((t0 + piece_row) * HV + hv) * static_cast<std::int64_t>(V) + c;
    alignas(16) bf16 values[8];
    if (row_ok && V % 8 == 0 && c + 8 <= V) {
      alignas(16) T packed[8];
      *reinterpret_cast<uint4*>(packed) = *reinterpret_cast<const uint4*>(src);
#pragma unroll
      for (int j = 0; j < 8; ++j) values[j] = __float2bfloat16_rn(to_float(packed[j]));
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) values[j] = __float2bfloat16_rn(row_ok && c + j < V ? to_float(src[j]) : 0.0f);
    }
    dout_next = *reinterpret_cast<const uint4*>(values);
  };
  if (chunks > 0) {
    issue_group_1(chunks - 1);
    load_dout(chunks - 1);
  }
  for (int ci = chunks - 1; ci >= 0; --ci) {
    const std::int64_t t0 = chunk_t0(ci), slot = slot_base + ci;
    const int len = chunk_length(t0, seq.eos);
    __pipeline_wait_prior(0);
    __syncthreads();  // group 1 of this chunk has landed; the previous update (dS, reads of Qgamma, Y, dO) is over
    issue_group_2(ci);
    if (piece_row < kC) *reinterpret_cast<uint4*>(dOb + piece_row * SB + piece_col) = dout_next;
    // The gradient of this chunk's end state, bf16 (the operand phase D's products use).
    bf16* out = dstates + (slot * HV + hv) * static_cast<std::size_t>(KP) * VP;
    for (int i = tid; i < KP * (VT / 8); i += kThreads) {
      const int d = i / (VT / 8), piece = i % (VT / 8), c = c0 + 8 * piece;
      if (c < VP)
        *reinterpret_cast<uint4*>(out + static_cast<std::size_t>(d) * VP + c) =
            *reinterpret_cast<const uint4*>(dSb + d * SB + 8 * piece);
    }
    __syncthreads();  // dO in shared memory
    // dR = Aqk^T dO + Ktail dS, kept negated for the update below.
    for (int t = warp; t < 4 * nv; t += kWarps) {
      const int rb = t / nv, cb = t % nv;
      Acc16 acc;
      acc.zero();
      mma_lower_transposed(acc, Aq, kAB, dOb, SB, rb, 16 * cb, lane);  // Aqk^T dO
      mma_ab(acc, Kt + 16 * rb * kEB, kEB, dSb + 16 * cb, SB, nk, lane);
      acc.store(stage, kStage, lane);  // dR, for dr_out below
      acc.negate();
      acc.store_bf16(dRn + 16 * rb * SB + 16 * cb, SB, lane);
      __syncwarp();
      // dR (bf16, as the update uses it) to dr_out [BT, HV, VP] for phase D.
      store_tile_bf16(stage, min(16, len - 16 * rb), [&](int i) {
        return dr_out + ((t0 + 16 * rb + i) * HV + hv) * static_cast<std::int64_t>(VP) + c0 + 16 * cb;
      }, lane, c0 + 16 * cb < VP);
      __syncwarp();
    }
    __pipeline_wait_prior(0);
    __syncthreads();  // group 2 has landed; dR is complete; Ktail and Aqk are dead
    issue_group_1(ci - 1);
    if (ci > 0) load_dout(ci - 1);
    // dS <- Diag(gamma_C) dS + Qgamma^T dO - Y^T dR; each warp updates its own 16 x 16 tiles in place.
#pragma unroll
    for (int j = 0; j < nv; ++j) {
      const int t = warp + kWarps * j, db = t / nv, cb = t % nv;
      if (t >= tiles) continue;
      Acc16& acc = grad[j];
      acc.scale_rows(gam + 16 * db, lane);
#pragma unroll 1  // (fully unrolled, the preloaded fragments would not fit two blocks per SM)
      for (int kb = 0; kb < 4; ++kb) {
        Frag16 q, y, o, dr;  // q, y: (d, r) = Qgamma[r][d], Y[r][d]
        load_a_transposed(q, Qg + 16 * kb * kEB + 16 * db, kEB, lane);
        load_a_transposed(y, Yb + 16 * kb * kEB + 16 * db, kEB, lane);
        load_b(o, dOb + 16 * kb * SB + 16 * cb, SB, lane);
        load_b(dr, dRn + 16 * kb * SB + 16 * cb, SB, lane);
        mma(acc, q, o);
        mma(acc, y, dr);
      }
      acc.store_bf16(dSb + 16 * db * SB + 16 * cb, SB, lane);  // the bf16 operand copy, straight from the accumulator
    }
  }
  __pipeline_wait_prior(0);
#pragma unroll
  for (int j = 0; j < nv; ++j) {
    const int t = warp + kWarps * j;
    if (t < tiles) {
      float* tile = dS32 + 16 * (t / nv) * SF + 16 * (t % nv);
      grad[j].store(tile, SF, lane);
    }
  }
  __syncthreads();  // dS complete
  if (dh0 != nullptr) {
    for (int i = tid; i < K * VT; i += kThreads) {
      const int d = i / VT, c = i % VT;
      if (c0 + c < V) dh0[state_base + static_cast<std::size_t>(d) * V + c0 + c] = dS32[d * SF + c];
    }
  }
}

template <class T, int VT>
void launch_tc_dstate(const Problem& p, const BackwardTensors& x, int N, const PrepareWorkspace& pw, bf16* dstates,
                      bf16* dr_out, cudaStream_t stream, const char* who) {
  constexpr int bytes = DStateLayout<VT>::bytes;
  auto kernel = round_up(p.K, 16) == kKMax ? tc_dstate_kernel<T, VT, kKMax / 16> : tc_dstate_kernel<T, VT, 0>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), who,
        "cudaFuncSetAttribute(tc_dstate_kernel, max dynamic shared memory)");
  const dim3 grid((p.V + VT - 1) / VT, p.HV, N);
  kernel<<<grid, kThreads, bytes, stream>>>(static_cast<const T*>(x.dout), x.dht, x.dh0, p.cu_seqlens, p.T, p.H, p.HV,
                                            p.K, p.V, round_up(p.K, 16), round_up(p.V, 16), pw, dstates, dr_out);
  check_launch(who, "tc_dstate_kernel");
}

}  // namespace

// K >= 16: with very few key channels the erase factor 1 - sum_d b_d k_d^2 of a unit key can approach 0 for the
// whole state (K = 1: 1 - b_t), and the chunk form's dh0 = Qgamma^T dO - Y^T dR then cancels terms far larger
// than itself, which bf16 operands cannot afford (tests/test_cuda_backward.cpp, TensorCoreMeetsTheBf16Contract).
// Such heads are not where speed matters; they run the fp32 program.
//
// Shared memory: the chunk-gradient kernel needs ~208 KB per block, which sm_90 offers (227 KB) and sm_80 does
// not (163 KB): there Mode::fast runs the fp32 program.
bool tensor_core_backward_eligible(const Problem& p) {
  if (p.dtype == DType::f32 || p.K < 16 || p.K > kKMax || p.V > kVMax) return false;
  int device = 0, max_shared = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&max_shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess)
    return false;
  return chunk_layout::bytes + 256 <= max_shared;
}

void tensor_core_backward(const Problem& p, const BackwardTensors& x, int N, float scale, float* dq, float* dk,
                          float* db, const SavedParts* saved, cudaStream_t stream, const char* who) {
  if (dq == nullptr && p.HV != p.H) fail(who, ": grouped value heads (HV > H) need fp32 accumulators for dq, dk, db");
  const int KP = round_up(p.K, 16), VP = round_up(p.V, 16);
  const std::int64_t tokens = static_cast<std::int64_t>(p.B) * p.T;
  const int slots = slot_count(p, N);
  const std::size_t val = static_cast<std::size_t>(tokens) * p.HV * VP;   // [BT, HV, VP]
  const std::size_t vkey = static_cast<std::size_t>(tokens) * p.HV * KP;  // [BT, HV, KP]
  const std::size_t vsq = static_cast<std::size_t>(tokens) * p.HV * kC;   // [BT, HV, 64]
  const std::size_t glast = static_cast<std::size_t>(slots) * p.HV * KP;
  const std::size_t state = static_cast<std::size_t>(slots) * p.HV * KP * VP;
  // The outputs of phases A and B (saved_forward.cuh) come first unless a SavedForward holds them, then this
  // backward's own: bf16 parts, then fp32; every part is a multiple of 16 bytes (KP, VP multiples of 16).
  const std::size_t own_saved = saved ? 0 : saved_parts_bytes(p, N);
  const std::size_t bf16_count = vkey + val + state;
  const std::size_t f32_count = 2 * vkey + vsq + glast;
  StreamBuffer workspace(own_saved + bf16_count * sizeof(bf16) + f32_count * sizeof(float), stream, who);
  const SavedParts parts = saved ? *saved : saved_parts(p, N, workspace.as<unsigned char>());
  const PrepareWorkspace& pw = parts.pw;
  StateGradients sg;
  sg.r = parts.r;
  sg.dy = reinterpret_cast<bf16*>(workspace.as<unsigned char>() + own_saved);
  sg.dr = sg.dy + vkey;
  bf16* dstates = sg.dr + val;
  sg.x = reinterpret_cast<float*>(dstates + state);
  sg.dkt = sg.x + vkey;
  sg.daqk = sg.dkt + vkey;
  sg.dglast = sg.daqk + vsq;
  const bf16* states = parts.states;
  // Phases B and C: 32 value columns per block (two blocks per SM) when that gives every SM a block, else 16
  // (the blocks are the sequential phases' only parallelism).
  int sms = 132, device = 0;
  check(cudaGetDevice(&device), who, "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), who, "cudaDeviceGetAttribute(SM count)");
  const int vt = static_cast<long long>(N) * p.HV * ((p.V + 31) / 32) >= sms ? 32 : 16;
  // 16-byte loads of 8 elements in the chunk-gradient kernel when every input allows them.
  auto aligned = [](const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0; };
  const bool vector_loads = p.K % 8 == 0 && p.V % 8 == 0 && aligned(x.q) && aligned(x.k) && aligned(x.v) &&
                            aligned(x.g) && aligned(x.b) && aligned(x.w);
  const bool vector_io = p.V % 8 == 0 && aligned(x.dout) && aligned(x.v) && aligned(x.w) && aligned(x.dv) &&
                         aligned(x.dw);  // the state-gradient kernel's dO loads and dv, dw stores
  if (saved == nullptr) {  // phases A and B
    launch_tensor_core_prepare(p, x.q, x.k, x.v, x.g, x.b, x.w, N, scale, pw, stream, who);
    launch_tensor_core_states(p, x.h0, N, pw, vt, parts.states, parts.r, stream, who);
  }
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, float>) {
      fail(who, ": the tensor-core backward takes bf16 or f16 inputs");
    } else {
      if (vt == 32) launch_tc_dstate<T, 32>(p, x, N, pw, dstates, sg.dr, stream, who);
      else launch_tc_dstate<T, 16>(p, x, N, pw, dstates, sg.dr, stream, who);
      // Phase D. The state-gradient kernel splits the key rows in two parts (64 rows each at K = 128, two blocks
      // per SM) when KP > 64 and the parts stay multiples of 16.
      const int parts = KP > 64 && KP % 32 == 0 ? 2 : 1;
      const StateGradLayout layout(KP / parts);
      auto state_kernel = tc_state_gradients_kernel<T>;
      check(cudaFuncSetAttribute(state_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, layout.bytes), who,
            "cudaFuncSetAttribute(tc_state_gradients_kernel, max dynamic shared memory)");
      state_kernel<<<dim3(slots, p.HV, parts), kThreads, layout.bytes, stream>>>(
          static_cast<const T*>(x.dout), static_cast<const T*>(x.v), static_cast<const T*>(x.w),
          static_cast<T*>(x.dv), static_cast<T*>(x.dw), states, dstates, p.cu_seqlens, N, p.T, p.H, p.HV, p.K, p.V,
          KP, VP, scale, pw, sg, vector_io);
      check_launch(who, "tc_state_gradients_kernel");
      auto chunk_kernel = tc_chunk_gradients_kernel<T>;
      check(cudaFuncSetAttribute(chunk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, chunk_layout::bytes), who,
            "cudaFuncSetAttribute(tc_chunk_gradients_kernel, max dynamic shared memory)");
      chunk_kernel<<<dim3(slots, p.HV), kGradThreads, chunk_layout::bytes, stream>>>(
          static_cast<const T*>(x.q), static_cast<const T*>(x.k), static_cast<const T*>(x.v), x.g,
          static_cast<const T*>(x.b), static_cast<const T*>(x.w), p.cu_seqlens, N, p.T, p.H, p.HV, p.K, p.V, KP, VP,
          pw, sg, KeyGradients<T>{dq == nullptr, static_cast<T*>(x.dq), static_cast<T*>(x.dk), static_cast<T*>(x.db),
                                  dq, dk, db, x.dg}, vector_loads);
      check_launch(who, "tc_chunk_gradients_kernel");
    }
  });
}

}  // namespace gdr2::cuda::detail
