// Chunkwise WY forward (spec section 5, Eq. 18-25), chunk C = 64, fp32 arithmetic (FFMA).
//
// Two kernels, with an fp32 workspace between them (allocated stream-ordered per call):
//   1. chunk_prepare_kernel, one block per (chunk, key head), all chunks in parallel:
//        Aqk (Eq. 24 scores, r >= s) and T (Eq. 19, s < r) with the decay exp(G_r - G_s), r >= s, formed
//        exactly inside 16-row sub-blocks and as a product of two factors <= 1 across sub-blocks,
//        A = (I + T)^{-1} by forward substitution, Y = A Ebar, and U = A Z for every value head of the group.
//        It also forms Qgamma, Ktail and gamma_C (Eq. 24-25), so the sequential kernel only multiplies.
//        Workspace: Aqk [BT, H, 64], Y, Qgamma, Ktail, gamma_C [BT, H, K], U [BT, HV, V].
//   2. chunk_state_kernel, one block per (V tile, value head, sequence), chunks in order:
//        R = U - Y S_0, O = scale (Qgamma S_0 + Aqk R), S_C = Diag(gamma_C) S_0 + Ktail^T R.
// Numerics: cumulative log-decays G are summed in double and kept as an unevaluated float pair
// (hi + lo), so G_r - G_s is accurate to ~eps |G_r - G_s| even when |G| is in the thousands (a float cumsum
// would give an absolute error ~eps |G|, i.e. relative errors ~1e-5 in the decays of neighbouring tokens).
// Only exp(G_r - G_s) with r >= s, exp(G_r) and exp(G_C - G_r) are formed: all <= 1 when g <= 0, so
// strong decay (g = -50, G of -3200 within a chunk) underflows to zeros, never overflows.
#include <algorithm>
#include <cstdlib>
#include <type_traits>

#include "chunk_forward_tc.cuh"
#include "chunk_slots.cuh"
#include "common.cuh"
#include "saved_forward.cuh"

namespace gdr2::cuda {
namespace {
using namespace detail;

constexpr int kChunk = 64;
constexpr int kThreads = 256;
constexpr int kTile = 32;           // d (or value column) tile of the prepare kernel
constexpr int kTilePad = kTile + 1;  // row stride of the tiles in shared memory (no bank conflicts)

// Cumulative log-decay of a 64-row tile of `Channels` channels, in place, by the whole block: on entry
// hi[r][c] = g_r (0 for rows >= len), on exit hi[r][c] + lo[r][c] = G_r = sum_{i<=r} g_i, summed in double
// (rows >= len hold G_{len-1}). Each channel's 64 rows are split into kThreads / Channels segments: a
// thread sums its segment, the segment totals are scanned with shuffles inside the lane group of the
// channel, then every thread writes its rows.
template <int Channels>
__device__ __forceinline__ void cumulative_decay(float* hi, float* lo, int stride) {
  constexpr int kSegments = kThreads / Channels;       // lanes per channel (a power of two <= 32)
  constexpr int kRowsPerSegment = kChunk / kSegments;
  static_assert(kSegments <= 32 && kSegments * Channels == kThreads && kRowsPerSegment * kSegments == kChunk, "");
  const int c = threadIdx.x / kSegments, segment = threadIdx.x % kSegments;
  const int r0 = segment * kRowsPerSegment;
  double prefix[kRowsPerSegment];
  double acc = 0.0;
#pragma unroll
  for (int i = 0; i < kRowsPerSegment; ++i) {
    acc += static_cast<double>(hi[(r0 + i) * stride + c]);
    prefix[i] = acc;
  }
  double offset = acc;  // inclusive scan of the segment totals across the channel's lanes
#pragma unroll
  for (int delta = 1; delta < kSegments; delta *= 2) {
    const double other = __shfl_up_sync(0xffffffffu, offset, delta, kSegments);
    if (segment >= delta) offset += other;
  }
  offset -= acc;  // exclusive
  __syncthreads();  // every thread has read its g before anyone overwrites
#pragma unroll
  for (int i = 0; i < kRowsPerSegment; ++i) {
    const double G = offset + prefix[i];
    const float h = static_cast<float>(G);
    hi[(r0 + i) * stride + c] = h;
    lo[(r0 + i) * stride + c] = static_cast<float>(G - static_cast<double>(h));
  }
}

// exp(G) for G = hi + lo (lo tiny): exp(hi) * exp(lo) ~ exp(hi) * (1 + lo).
__device__ __forceinline__ float exp_pair(float hi, float lo) { return expf(hi) * (1.0f + lo); }

// ---------------------------------------------------------------------------------------------------
// Kernel 1: per (chunk, key head): Aqk, A = (I + T)^{-1}, Y = A Ebar, U = A Z.
// Shared memory: the tile region (score tiles, later T, later the Y / U tiles) + A (64 x 65).
// The score phase uses ten 64 x 17 tiles (d tile of 16), the Y / U phase five 64 x 33 tiles; they share
// the first region.
constexpr int kScoreTile = 16;
constexpr int kScorePad = kScoreTile + 1;
constexpr int kTileRegion = (10 * kChunk * kScorePad > 5 * kChunk * kTilePad) ? 10 * kChunk * kScorePad
                                                                               : 5 * kChunk * kTilePad;
// T (64 x 65) lives in the tile region (the tiles are dead once the scores are done, and the Y / U phase
// that reuses them needs only A), so a block needs ~60 KB and three blocks fit on an SM.
static_assert(kTileRegion >= kChunk * (kChunk + 1), "T must fit in the tile region");
constexpr std::size_t kPrepareShared = (kTileRegion + kChunk * (kChunk + 1)) * sizeof(float);
constexpr int kBlock = 16;  // sub-block of rows for the factorised decays

template <class T>
__global__ void __launch_bounds__(kThreads, 3)
chunk_prepare_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                     const float* __restrict__ g, const T* __restrict__ b, const T* __restrict__ w,
                     const std::int32_t* __restrict__ cu_seqlens, int N, int T_, int H, int HV, int K, int V,
                     float* __restrict__ ws_aqk, float* __restrict__ ws_y, float* __restrict__ ws_u,
                     float* __restrict__ ws_qg, float* __restrict__ ws_ktail, float* __restrict__ ws_gamma_c) {
  extern __shared__ float smem[];
  float* s_ghi = smem;
  float* s_glo = s_ghi + kChunk * kTilePad;
  float* s_key = s_glo + kChunk * kTilePad;
  float* s_query = s_key + kChunk * kTilePad;
  float* s_erase = s_query + kChunk * kTilePad;  // e = b * k; later Ebar, then Z
  float* s_t = smem;                             // T  [64][65], aliases the tiles (dead by then)
  float* s_a = smem + kTileRegion;                // A  [64][65]
  constexpr int kRow = kChunk + 1;

  __shared__ Slot slot_shared;
  if (threadIdx.x == 0) slot_shared = find_slot(cu_seqlens, N, T_, blockIdx.x);
  __syncthreads();
  const Slot chunk = slot_shared;
  if (chunk.len <= 0) return;
  const int h = blockIdx.y, tid = threadIdx.x, len = chunk.len;
  auto key_index = [&](int r, int d) { return ((chunk.t0 + r) * H + h) * static_cast<std::int64_t>(K) + d; };

  // Loads a 64 x 32 tile of g (into s_ghi, then G = s_ghi + s_glo), k and e = b*k; rows >= len are zero.
  auto load_tile = [&](int d0) {
    for (int i = tid; i < kChunk * kTile; i += kThreads) {
      const int r = i / kTile, dd = i % kTile, d = d0 + dd;
      const bool ok = r < len && d < K;
      const std::int64_t at = ok ? key_index(r, d) : 0;
      s_ghi[r * kTilePad + dd] = ok ? g[at] : 0.0f;
      const float kv = ok ? to_float(k[at]) : 0.0f;
      s_key[r * kTilePad + dd] = kv;
      s_query[r * kTilePad + dd] = ok ? to_float(q[at]) : 0.0f;
      s_erase[r * kTilePad + dd] = ok ? to_float(b[at]) * kv : 0.0f;
    }
    __syncthreads();
    cumulative_decay<kTile>(s_ghi, s_glo, kTilePad);
    __syncthreads();
  };

  // ---- scores Aqk (r >= s) and T (s < r), per d tile of 16 channels -----------------------------------
  // Rows are grouped in 16-row sub-blocks I with first row i0(I). For s in an earlier sub-block J < I:
  //   exp(G_r - G_s) = exp(G_r - G_i0) * exp(G_i0 - G_s),  both factors <= 1 (g <= 0, s < i0 <= r),
  // so those entries are plain dot products of prescaled rows (an underflowing factor means the exact value
  // is below 1e-38 too). Inside the diagonal sub-block the decay exp(G_r - G_s), r >= s, is formed exactly.
  // Thread: row r = tid / 4 (a warp holds 8 rows of one sub-block, so the branches are warp-uniform),
  // columns s = tid % 4 + 4 j.
  {
    float* t_ghi = smem;                              // the tiles of this phase, 64 x 17 each
    float* t_glo = t_ghi + kChunk * kScorePad;
    float* t_key = t_glo + kChunk * kScorePad;
    float* t_query = t_key + kChunk * kScorePad;
    float* t_erase = t_query + kChunk * kScorePad;    // e = b * k
    float* t_qs = t_erase + kChunk * kScorePad;       // q_r exp(G_r - G_i0(r))
    float* t_es = t_qs + kChunk * kScorePad;          // e_r exp(G_r - G_i0(r))
    float* t_ks = t_es + kChunk * kScorePad;          // 3 tiles: k_s exp(G_i0(I) - G_s), I = 1, 2, 3
    const int r = tid >> 2, quarter = tid & 3, row_block = r / kBlock;
    float aqk[16], tmat[16];         // columns s = quarter + 4 j in earlier sub-blocks
    float diag_aqk[4], diag_t[4];    // columns s = quarter + 16 I + 4 m in the own sub-block I
#pragma unroll
    for (int j = 0; j < 16; ++j) aqk[j] = tmat[j] = 0.0f;
#pragma unroll
    for (int m = 0; m < 4; ++m) diag_aqk[m] = diag_t[m] = 0.0f;

    for (int d0 = 0; d0 < K; d0 += kScoreTile) {
      for (int i = tid; i < kChunk * kScoreTile; i += kThreads) {
        const int rr = i / kScoreTile, dd = i % kScoreTile, d = d0 + dd;
        const bool ok = rr < len && d < K;
        const std::int64_t at = ok ? key_index(rr, d) : 0;
        const float kv = ok ? to_float(k[at]) : 0.0f;
        t_ghi[rr * kScorePad + dd] = ok ? g[at] : 0.0f;
        t_key[rr * kScorePad + dd] = kv;
        t_query[rr * kScorePad + dd] = ok ? to_float(q[at]) : 0.0f;
        t_erase[rr * kScorePad + dd] = ok ? to_float(b[at]) * kv : 0.0f;
      }
      __syncthreads();
      cumulative_decay<kScoreTile>(t_ghi, t_glo, kScorePad);
      __syncthreads();
      // Prescaled rows (every factor is exp of a non-positive difference).
      for (int i = tid; i < kChunk * kScoreTile; i += kThreads) {
        const int rr = i / kScoreTile, dd = i % kScoreTile, at = rr * kScorePad + dd;
        const int i0 = (rr / kBlock) * kBlock;
        const float hi = t_ghi[at], lo = t_glo[at];
        const float own = expf((hi - t_ghi[i0 * kScorePad + dd]) + (lo - t_glo[i0 * kScorePad + dd]));
        t_qs[at] = t_query[at] * own;
        t_es[at] = t_erase[at] * own;
#pragma unroll
        for (int blk = 1; blk < kChunk / kBlock; ++blk) {
          const int j0 = blk * kBlock;  // first row of the later sub-block this row is a column of
          t_ks[(blk - 1) * kChunk * kScorePad + at] =
              rr < j0 ? t_key[at] * expf((t_ghi[j0 * kScorePad + dd] - hi) + (t_glo[j0 * kScorePad + dd] - lo))
                      : 0.0f;
        }
      }
      __syncthreads();
      const float* ks = t_ks + (row_block > 0 ? row_block - 1 : 0) * kChunk * kScorePad;
      // Branch-free inner loops (the sub-block tests are warp-uniform and outside the FMA chains), so the
      // 16 independent accumulations of a thread interleave.
#pragma unroll 2
      for (int dd = 0; dd < kScoreTile; ++dd) {
        const int at_r = r * kScorePad + dd;
        const float qs = t_qs[at_r], es = t_es[at_r];
        const float hi = t_ghi[at_r], lo = t_glo[at_r], qv = t_query[at_r], ev = t_erase[at_r];
        // Earlier sub-blocks J < I: factorised decays, two FMAs per entry.
#pragma unroll
        for (int J = 0; J < kChunk / kBlock - 1; ++J) {
          if (J < row_block) {
#pragma unroll
            for (int m = 0; m < 4; ++m) {
              const int j = 4 * J + m;
              const float kv = ks[(quarter + 4 * j) * kScorePad + dd];
              aqk[j] = fmaf(qs, kv, aqk[j]);   // (Aqk)_rs = sum_d q_r k_s exp(G_r - G_s)
              tmat[j] = fmaf(es, kv, tmat[j]);  // T_rs = sum_d b_r k_r k_s exp(G_r - G_s)
            }
          }
        }
        // Own sub-block: exact decay exp(G_r - G_s) for s <= r; exp(-inf) = 0 masks s > r.
#pragma unroll
        for (int m = 0; m < 4; ++m) {
          const int sc = quarter + kBlock * row_block + 4 * m;
          const int at_s = sc * kScorePad + dd;
          const float arg = sc <= r ? (hi - t_ghi[at_s]) + (lo - t_glo[at_s]) : -INFINITY;
          const float decayed_key = t_key[at_s] * expf(arg);
          diag_aqk[m] = fmaf(qv, decayed_key, diag_aqk[m]);
          diag_t[m] = fmaf(ev, decayed_key, diag_t[m]);
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int sc = quarter + 4 * j, col_block = j / 4;
      const float a = col_block < row_block ? aqk[j] : col_block == row_block ? diag_aqk[j % 4] : 0.0f;
      const float t = col_block < row_block ? tmat[j] : col_block == row_block ? diag_t[j % 4] : 0.0f;
      s_t[r * kRow + sc] = (sc < r && r < len) ? t : 0.0f;
      if (r < len) ws_aqk[((chunk.t0 + r) * H + h) * kChunk + sc] = (sc <= r) ? a : 0.0f;
    }
  }
  __syncthreads();

  // ---- A = (I + T)^{-1}: row r of A = e_r - sum_{s<r} T_rs A_s (forward substitution, Eq. 20) ----
  // Thread (column c = tid / 4, part = tid % 4) sums s = c + part, c + part + 4, ...; 4 lanes reduce.
  {
    const int c = tid >> 2, part = tid & 3;
    for (int r = 0; r < kChunk; ++r) {
      float sum = 0.0f;
#pragma unroll 4
      for (int s = c + part; s < r; s += 4) sum = fmaf(s_t[r * kRow + s], s_a[s * kRow + c], sum);
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      if (part == 0) s_a[r * kRow + c] = (c < r) ? -sum : (c == r ? 1.0f : 0.0f);
      __syncthreads();
    }
  }

  // ---- Y = A Ebar (Ebar = gamma * b * k), per d tile ---------------------------------------------------
  // Thread: column dd = tid % 32 of the tile, rows r = tid / 32 + 8 i.
  const int lane = tid & 31, group = tid >> 5;
  for (int d0 = 0; d0 < K; d0 += kTile) {
    load_tile(d0);
    // Row-wise factors, all exp of a non-positive argument: gamma_r = exp(G_r), exp(G_C - G_r).
    for (int i = tid; i < kChunk * kTile; i += kThreads) {
      const int r = i / kTile, dd = i % kTile, d = d0 + dd;
      const int at = r * kTilePad + dd, last = (len - 1) * kTilePad + dd;
      const float gamma = exp_pair(s_ghi[at], s_glo[at]);
      s_erase[at] *= gamma;  // Ebar_r = gamma_r * b_r * k_r
      if (r < len && d < K) {
        ws_qg[key_index(r, d)] = gamma * s_query[at];  // Eq. 24: row r of Qgamma = gamma_r * q_r
        // Eq. 25: row r of Ktail = exp(G_C - G_r) * k_r
        ws_ktail[key_index(r, d)] = s_key[at] * expf((s_ghi[last] - s_ghi[at]) + (s_glo[last] - s_glo[at]));
        if (r == 0) ws_gamma_c[key_index(0, d)] = exp_pair(s_ghi[last], s_glo[last]);  // gamma_C, at row t0
      }
    }
    __syncthreads();
    const int d = d0 + lane;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int r = group + 8 * i;
      float y = 0.0f;
#pragma unroll 8
      for (int s = 0; s <= r; ++s) y = fmaf(s_a[r * kRow + s], s_erase[s * kTilePad + lane], y);
      if (r < len && d < K) ws_y[key_index(r, d)] = y;
    }
    __syncthreads();
  }

  // ---- U = A Z (Z = w * v) for every value head of this key head's group -----------------------------
  const int group_size = HV / H;
  for (int hv = h * group_size; hv < (h + 1) * group_size; ++hv) {
    for (int c0 = 0; c0 < V; c0 += kTile) {
      for (int i = tid; i < kChunk * kTile; i += kThreads) {
        const int r = i / kTile, cc = i % kTile, c = c0 + cc;
        const bool ok = r < len && c < V;
        const std::int64_t at = ((chunk.t0 + r) * HV + hv) * static_cast<std::int64_t>(V) + c;
        s_erase[r * kTilePad + cc] = ok ? to_float(w[at]) * to_float(v[at]) : 0.0f;  // Z = W * V
      }
      __syncthreads();
      const int c = c0 + lane;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int r = group + 8 * i;
        float u = 0.0f;
#pragma unroll 8
        for (int s = 0; s <= r; ++s) u = fmaf(s_a[r * kRow + s], s_erase[s * kTilePad + lane], u);
        if (r < len && c < V) ws_u[((chunk.t0 + r) * HV + hv) * static_cast<std::int64_t>(V) + c] = u;
      }
      __syncthreads();
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Kernel 2: per (V tile of width VT, value head, sequence): the state recurrence over the chunks.
template <int KMAX, int VT>
constexpr std::size_t state_shared_bytes(int K) {
  // S [K][VT], X [64][K+1], R [64][VT+1], Aqk [64][65], gamma_C [K]
  return (static_cast<std::size_t>(K) * VT + kChunk * (K + 1) + kChunk * (VT + 1) + kChunk * (kChunk + 1) + K) *
         sizeof(float);
}

template <class T, int KMAX, int VT, bool Prefetch>
__global__ void __launch_bounds__(kThreads, 1)
chunk_state_kernel(const float* h0, T* __restrict__ o, float* ht, const std::int32_t* __restrict__ cu_seqlens,
                   int T_, int H, int HV, int K, int V, float scale, const float* __restrict__ ws_aqk,
                   const float* __restrict__ ws_y, const float* __restrict__ ws_u, const float* __restrict__ ws_qg,
                   const float* __restrict__ ws_ktail, const float* __restrict__ ws_gamma_c) {
  extern __shared__ float smem[];
  const int XS = K + 1;          // row stride of X
  constexpr int RS = VT + 1;     // row stride of R
  constexpr int AS = kChunk + 1;  // row stride of Aqk
  float* s_state = smem;                       // S [K][VT]
  float* s_x = s_state + K * VT;               // X [64][K+1]: Y, then Qgamma, then Ktail
  float* s_r = s_x + kChunk * XS;              // R [64][VT+1]
  float* s_aqk = s_r + kChunk * RS;            // Aqk [64][65]
  float* s_gamma_c = s_aqk + kChunk * AS;      // gamma_C [K]

  const int tid = threadIdx.x;
  const int c0 = blockIdx.x * VT, hv = blockIdx.y, n = blockIdx.z;
  const int h = hv / (HV / H);
  const SeqRange seq = sequence_range(cu_seqlens, n, T_);
  const std::size_t state_base = (static_cast<std::size_t>(n) * HV + hv) * K * V;

  for (int i = tid; i < K * VT; i += kThreads) {
    const int d = i / VT, c = c0 + i % VT;
    s_state[i] = (h0 != nullptr && c < V) ? h0[state_base + static_cast<std::size_t>(d) * V + c] : 0.0f;
  }

  // Matrix-product thread layout for the 64 x VT outputs (R and O): rows 4*ty + i, columns tx + 16 j.
  constexpr int kCols = VT / 16;
  const int ty = tid >> 4, tx = tid & 15;
  // State-update layout for the K x VT outputs: rows dy + 16 i, columns tx + 16 j.
  constexpr int kStateRows = KMAX / 16;
  constexpr int kStage = kChunk * KMAX / kThreads;  // workspace values per thread per 64 x K tile
  float stage[kStage];

  for (std::int64_t t0 = seq.bos; t0 < seq.eos; t0 += kChunk) {
    const int len = static_cast<int>(seq.eos - t0 < kChunk ? seq.eos - t0 : kChunk);
    auto key_index = [&](int r, int d) { return ((t0 + r) * H + h) * static_cast<std::int64_t>(K) + d; };
    auto value_index = [&](int r, int c) { return ((t0 + r) * HV + hv) * static_cast<std::int64_t>(V) + c; };

    // Workspace loads are issued early into registers (`stage`, `u_pre`) and stored to shared memory one
    // phase later, so their latency overlaps the previous phase's products.
    auto fetch = [&](const float* src) {
#pragma unroll
      for (int m = 0; m < kStage; ++m) {
        const int i = tid + m * kThreads, r = i / K, d = i % K;
        stage[m] = (i < kChunk * K && r < len) ? src[key_index(r, d)] : 0.0f;
      }
    };
    auto deposit = [&]() {
#pragma unroll
      for (int m = 0; m < kStage; ++m) {
        const int i = tid + m * kThreads, r = i / K, d = i % K;
        if (i < kChunk * K) s_x[r * XS + d] = stage[m];
      }
    };

    // (a) X = Y, Aqk, gamma_C; U and Qgamma in flight.
    float u_pre[4][kCols];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < kCols; ++j) {
        const int r = 4 * ty + i, c = c0 + tx + 16 * j;
        u_pre[i][j] = (r < len && c < V) ? ws_u[value_index(r, c)] : 0.0f;
      }
    for (int i = tid; i < kChunk * K; i += kThreads) {
      const int r = i / K, d = i % K;
      s_x[r * XS + d] = r < len ? ws_y[key_index(r, d)] : 0.0f;
    }
    for (int i = tid; i < kChunk * kChunk; i += kThreads) {
      const int r = i / kChunk, s = i % kChunk;
      s_aqk[r * AS + s] = r < len ? ws_aqk[((t0 + r) * H + h) * kChunk + s] : 0.0f;
    }
    for (int d = tid; d < K; d += kThreads) s_gamma_c[d] = ws_gamma_c[key_index(0, d)];
    if (Prefetch) fetch(ws_qg);
    __syncthreads();
    // Eq. 23: R = U - Y S_0.
    {
      float acc[4][kCols];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < kCols; ++j) acc[i][j] = 0.0f;
      for (int d = 0; d < K; ++d) {
        float x[4], s[kCols];
#pragma unroll
        for (int i = 0; i < 4; ++i) x[i] = s_x[(4 * ty + i) * XS + d];
#pragma unroll
        for (int j = 0; j < kCols; ++j) s[j] = s_state[d * VT + tx + 16 * j];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < kCols; ++j) acc[i][j] = fmaf(x[i], s[j], acc[i][j]);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = 4 * ty + i;
#pragma unroll
        for (int j = 0; j < kCols; ++j) {
          const int c = c0 + tx + 16 * j;
          const bool ok = r < len && c < V;
          s_r[r * RS + tx + 16 * j] = ok ? u_pre[i][j] - acc[i][j] : 0.0f;
        }
      }
    }
    __syncthreads();

    // (b) X = Qgamma (Y is dead); Ktail in flight.
    if (!Prefetch) fetch(ws_qg);
    deposit();
    if (Prefetch) fetch(ws_ktail);
    __syncthreads();

    // (c) Eq. 24: O = scale (Qgamma S_0 + Aqk R).
    {
      float acc[4][kCols];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < kCols; ++j) acc[i][j] = 0.0f;
      for (int d = 0; d < K; ++d) {
        float x[4], s[kCols];
#pragma unroll
        for (int i = 0; i < 4; ++i) x[i] = s_x[(4 * ty + i) * XS + d];
#pragma unroll
        for (int j = 0; j < kCols; ++j) s[j] = s_state[d * VT + tx + 16 * j];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < kCols; ++j) acc[i][j] = fmaf(x[i], s[j], acc[i][j]);
      }
      const int last_row = min(4 * ty + 3, len - 1);  // Aqk is lower triangular: s <= r
      for (int s = 0; s <= last_row; ++s) {
        float a[4], rr[kCols];
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = s_aqk[(4 * ty + i) * AS + s];
#pragma unroll
        for (int j = 0; j < kCols; ++j) rr[j] = s_r[s * RS + tx + 16 * j];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < kCols; ++j) acc[i][j] = fmaf(a[i], rr[j], acc[i][j]);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = 4 * ty + i;
#pragma unroll
        for (int j = 0; j < kCols; ++j) {
          const int c = c0 + tx + 16 * j;
          if (r < len && c < V) o[value_index(r, c)] = from_float<T>(scale * acc[i][j]);
        }
      }
    }
    __syncthreads();

    // (d) X = Ktail (Qgamma is dead).
    if (!Prefetch) fetch(ws_ktail);
    deposit();
    __syncthreads();

    // (e) Eq. 25: S_C = Diag(gamma_C) S_0 + Ktail^T R. Each thread updates its own entries in place.
    {
      const int dy = ty;
      float acc[kStateRows][kCols];
#pragma unroll
      for (int i = 0; i < kStateRows; ++i)
#pragma unroll
        for (int j = 0; j < kCols; ++j) acc[i][j] = 0.0f;
      for (int r = 0; r < len; ++r) {
        float kt[kStateRows], rr[kCols];
#pragma unroll
        for (int i = 0; i < kStateRows; ++i) {
          const int d = dy + 16 * i;
          kt[i] = d < K ? s_x[r * XS + d] : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < kCols; ++j) rr[j] = s_r[r * RS + tx + 16 * j];
#pragma unroll
        for (int i = 0; i < kStateRows; ++i)
#pragma unroll
          for (int j = 0; j < kCols; ++j) acc[i][j] = fmaf(kt[i], rr[j], acc[i][j]);
      }
#pragma unroll
      for (int i = 0; i < kStateRows; ++i) {
        const int d = dy + 16 * i;
        if (d < K) {
#pragma unroll
          for (int j = 0; j < kCols; ++j) {
            float& s = s_state[d * VT + tx + 16 * j];
            s = fmaf(s_gamma_c[d], s, acc[i][j]);
          }
        }
      }
    }
    __syncthreads();
  }

  if (ht != nullptr) {
    for (int i = tid; i < K * VT; i += kThreads) {
      const int d = i / VT, c = c0 + i % VT;
      if (c < V) ht[state_base + static_cast<std::size_t>(d) * V + c] = s_state[i];
    }
  }
}

template <class T, int KMAX, int VT>
void launch_state(const Problem& p, const ForwardTensors& x, int N, float scale, const float* const* ws,
                  cudaStream_t stream, const char* who) {
  // GDR2_CUDA_STATE_PREFETCH=0 selects the variant that loads each workspace tile right before its use
  // (kept to measure what issuing the loads one phase early buys).
  const char* prefetch_env = std::getenv("GDR2_CUDA_STATE_PREFETCH");
  const bool prefetch = prefetch_env == nullptr || std::atoi(prefetch_env) != 0;
  const std::size_t shared = state_shared_bytes<KMAX, VT>(p.K);
  auto kernel = prefetch ? chunk_state_kernel<T, KMAX, VT, true> : chunk_state_kernel<T, KMAX, VT, false>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)), who,
        "cudaFuncSetAttribute(chunk_state_kernel, max dynamic shared memory)");
  const dim3 grid((p.V + VT - 1) / VT, p.HV, N);
  kernel<<<grid, kThreads, shared, stream>>>(x.h0, static_cast<T*>(x.o), x.ht, p.cu_seqlens, p.T, p.H, p.HV, p.K,
                                             p.V, scale, ws[0], ws[1], ws[2], ws[3], ws[4], ws[5]);
  check_launch(who, "chunk_state_kernel");
}

}  // namespace

namespace {

// chunk_forward, filling `saved` when it is given and the tensor-core path applies (saved_forward.cuh).
void forward(const Problem& p, const ForwardTensors& x, Mode mode, SavedForward* saved, cudaStream_t stream) {
  const char* who = "gdr2::cuda::chunk_forward";
  if (saved) SavedForwardAccess::clear(*saved);
  const Validated checked = validate_problem(p, who);
  if (mode != Mode::fast && mode != Mode::accurate) fail(who, ": unknown mode ", static_cast<int>(mode));
  if (p.K > 256) fail(who, ": K must be <= 256, got K = ", p.K);
  validate_forward_tensors(p, x, checked.N, who);
  const std::int64_t tokens = static_cast<std::int64_t>(p.B) * p.T;
  if (tokens == 0) {
    // No tokens: the final state is the initial state (or zeros).
    if (x.ht != nullptr && x.ht != x.h0) {
      const std::size_t bytes = static_cast<std::size_t>(checked.N) * p.HV * p.K * p.V * sizeof(float);
      if (x.h0) check(cudaMemcpyAsync(x.ht, x.h0, bytes, cudaMemcpyDeviceToDevice, stream), who, "cudaMemcpyAsync(h0 -> ht)");
      else check(cudaMemsetAsync(x.ht, 0, bytes, stream), who, "cudaMemsetAsync(ht)");
    }
    return;
  }
  // V tile: 64 unless that leaves most SMs idle (the state recurrence is sequential over chunks, so the
  // blocks are its only parallelism; narrower tiles use the FMA units less well).
  int sms = 132;
  int device = 0;
  if (cudaGetDevice(&device) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  auto blocks = [&](int vt) { return static_cast<long long>(checked.N) * p.HV * ((p.V + vt - 1) / vt); };
  int vt = blocks(64) >= sms / 2 ? 64 : blocks(32) >= sms / 2 ? 32 : 16;
  // GDR2_CUDA_STATE_VT=16|32|64 forces the tile (tests cover every tile width; benchmarks compare them).
  if (const char* forced = std::getenv("GDR2_CUDA_STATE_VT")) {
    const int f = std::atoi(forced);
    if (f != 16 && f != 32 && f != 64) fail(who, ": GDR2_CUDA_STATE_VT must be 16, 32 or 64, got '", forced, "'");
    vt = f;
  }
  if (mode == Mode::fast && tensor_core_forward_eligible(p)) {
    // The tensor-core state kernel fits two 32-column blocks per SM (one 64-column block): 32 columns when
    // every block of that width is resident at once (measured faster at B=4, T=4096: cuda/README.md).
    const bool forced = std::getenv("GDR2_CUDA_STATE_VT") != nullptr;
    if (!forced && vt == 64 && blocks(32) <= 2LL * sms) vt = 32;
    if (saved != nullptr && saved_forward_applies(p, mode)) {
      const SavedParts parts = SavedForwardAccess::begin_fill(*saved, p, checked.N, x, mode, who);
      chunk_forward_tensor_core(p, x, checked, vt, &parts, stream, who);
      SavedForwardAccess::mark_filled(*saved);
    } else {
      chunk_forward_tensor_core(p, x, checked, vt, nullptr, stream, who);
    }
    return;
  }
  // Workspace (fp32), everything the state recurrence needs that does not depend on the state:
  // Aqk [BT, H, 64], Y, Qgamma, Ktail [BT, H, K], U [BT, HV, V], gamma_C [BT, H, K] (row t0 of each chunk).
  const std::size_t aqk_count = static_cast<std::size_t>(tokens) * p.H * kChunk;
  const std::size_t key_count = static_cast<std::size_t>(tokens) * p.H * p.K;
  const std::size_t u_count = static_cast<std::size_t>(tokens) * p.HV * p.V;
  StreamBuffer workspace((aqk_count + 4 * key_count + u_count) * sizeof(float), stream, who);
  float* ws_aqk = workspace.as<float>();
  float* ws_y = ws_aqk + aqk_count;
  float* ws_qg = ws_y + key_count;
  float* ws_ktail = ws_qg + key_count;
  float* ws_gamma_c = ws_ktail + key_count;
  float* ws_u = ws_gamma_c + key_count;
  const float* ws[6] = {ws_aqk, ws_y, ws_u, ws_qg, ws_ktail, ws_gamma_c};

  const int slots = p.cu_seqlens ? (p.T + kChunk - 1) / kChunk + checked.N : checked.N * ((p.T + kChunk - 1) / kChunk);
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto prepare = chunk_prepare_kernel<T>;
    check(cudaFuncSetAttribute(prepare, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kPrepareShared)),
          who, "cudaFuncSetAttribute(chunk_prepare_kernel, max dynamic shared memory)");
    prepare<<<dim3(slots, p.H), kThreads, kPrepareShared, stream>>>(
        static_cast<const T*>(x.q), static_cast<const T*>(x.k), static_cast<const T*>(x.v), x.g,
        static_cast<const T*>(x.b), static_cast<const T*>(x.w), p.cu_seqlens, checked.N, p.T, p.H, p.HV, p.K, p.V,
        ws_aqk, ws_y, ws_u, ws_qg, ws_ktail, ws_gamma_c);
    check_launch(who, "chunk_prepare_kernel");
    auto run = [&](auto kmax) {
      constexpr int KMAX = decltype(kmax)::value;
      if (vt == 64 && KMAX <= 128) launch_state<T, KMAX, (KMAX <= 128 ? 64 : 32)>(p, x, checked.N, checked.scale, ws, stream, who);
      else if (vt >= 32) launch_state<T, KMAX, 32>(p, x, checked.N, checked.scale, ws, stream, who);
      else launch_state<T, KMAX, 16>(p, x, checked.N, checked.scale, ws, stream, who);
    };
    if (p.K <= 64) run(std::integral_constant<int, 64>{});
    else if (p.K <= 128) run(std::integral_constant<int, 128>{});
    else run(std::integral_constant<int, 256>{});
  });
}

}  // namespace

void chunk_forward(const Problem& p, const ForwardTensors& x, Mode mode, cudaStream_t stream) {
  forward(p, x, mode, nullptr, stream);
}

void chunk_forward(const Problem& p, const ForwardTensors& x, Mode mode, SavedForward& saved, cudaStream_t stream) {
  forward(p, x, mode, &saved, stream);
}

}  // namespace gdr2::cuda
