#pragma once
// Shared by the tensor-core chunk kernels (chunk_forward_tc.cu, chunk_backward_tc.cu): the products
// (mma_sync.cuh), the chunk and tile constants, the chunk-slot numbering, exp2 in one instruction, and the bf16 tile
// movers (cp.async loads with zero fill, 16-byte stores). Internal header.
#include <cuda_pipeline.h>

#include <cstdint>

#include "chunk_slots.cuh"
#include "common.cuh"
#include "mma_sync.cuh"

namespace gdr2::cuda::detail::tc {
using bf16 = __nv_bfloat16;

constexpr int kC = kSlotTokens;  // chunk
constexpr int kThreads = 256;    // 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kKMax = 128;       // largest K (and, in the backward, V) of the tensor-core path
constexpr int kEB = kKMax + 8;   // row stride of a 64 x 128 (or 128 x 128) bf16 tile
constexpr int kAB = kC + 8;      // row stride of bf16 64 x 64 matrices (A, Aqk)
constexpr int kSS = kC + 4;      // row stride of fp32 64 x 64 matrices
constexpr int kStage = 20;       // per-warp 16 x 16 fp32 staging tile, row stride

// 2^x in one MUFU instruction (relative error ~2^-22; 2^-inf = 0). The kernels keep G in units of log2(e)
// (G2 = G log2 e), so exp(G_r - G_s) = exp2(G2_r - G2_s).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
constexpr float kLog2e = 1.4426950408889634f;

__host__ __device__ constexpr int round_up(int x, int m) { return (x + m - 1) / m * m; }

// 8 consecutive elements from global memory: `valid` of them (the rest zero); with `vector` (16-byte aligned
// and valid == 8) in 16-byte loads.
template <class E>
__device__ __forceinline__ void load8(E (&dst)[8], const E* src, int valid, bool vector) {
  if (vector && valid == 8) {
#pragma unroll
    for (int i = 0; i < static_cast<int>(8 * sizeof(E) / 16); ++i)
      reinterpret_cast<uint4*>(dst)[i] = reinterpret_cast<const uint4*>(src)[i];
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) dst[j] = j < valid ? src[j] : from_float<E>(0.0f);
  }
}

// 8 consecutive elements to global memory: the first `valid`; with `vector` (16-byte aligned, valid == 8) in
// 16-byte stores.
template <class E>
__device__ __forceinline__ void store8(E* dst, const E (&x)[8], int valid, bool vector) {
  if (vector && valid == 8) {
#pragma unroll
    for (int i = 0; i < static_cast<int>(8 * sizeof(E) / 16); ++i)
      reinterpret_cast<uint4*>(dst)[i] = reinterpret_cast<const uint4*>(x)[i];
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j)
      if (j < valid) dst[j] = x[j];
  }
}

// 8 floats as 8 bf16 in one 16-byte store (dst 16-byte aligned).
__device__ __forceinline__ void store8_bf16(bf16* dst, const float (&x)[8]) {
  alignas(16) bf16 packed[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) packed[j] = __float2bfloat16_rn(x[j]);
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(packed);
}

// Stores a 16 x 16 fp32 tile (staged in shared memory, row stride kStage) as bf16 rows of global memory:
// row i goes to dst(i) unless i >= rows; each lane writes 8 consecutive values (one 16-byte store).
template <class RowPtr>
__device__ __forceinline__ void store_tile_bf16(const float* stage, int rows, RowPtr dst, int lane, bool active = true) {
  const int i = lane >> 1, j0 = (lane & 1) * 8;
  if (!active || i >= rows) return;
  alignas(16) bf16 packed[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) packed[j] = __float2bfloat16_rn(stage[i * kStage + j0 + j]);
  *reinterpret_cast<uint4*>(dst(i) + j0) = *reinterpret_cast<const uint4*>(packed);
}

// Issues cp.async copies of a 64-row bf16 tile: row r < rows_ok from src + r * src_ld, `Pieces` 16-byte
// pieces per row, piece p valid when p < valid_pieces; everything else is zero-filled. `Threads`: the block size.
template <int Pieces, int Threads = kThreads>
__device__ __forceinline__ void async_rows(bf16* dst, int ld, const bf16* src, std::int64_t src_ld, int rows_ok,
                                           int valid_pieces, int tid) {
#pragma unroll
  for (int i = tid; i < kC * Pieces; i += Threads) {
    const int r = i / Pieces, p = i % Pieces;
    const bool ok = r < rows_ok && p < valid_pieces;
    __pipeline_memcpy_async(dst + r * ld + 8 * p, ok ? src + r * src_ld + 8 * p : src, 16, ok ? 0 : 16);
  }
}

// acc += L^T X for the 16 x 16 output block (rb, cb): L is a lower-triangular 64 x 64 bf16 matrix (row stride
// ldl), so (L^T)_{r, r2} = L_{r2 r} needs r2 >= r and only the k blocks kb >= rb contribute; X is bf16 with
// row stride ldx, the output's 16 columns taken from X's columns x_col .. x_col + 15.
__device__ __forceinline__ void mma_lower_transposed(Acc16& acc, const bf16* L, int ldl, const bf16* X, int ldx,
                                                     int rb, int x_col, int lane) {
  mma_atb(acc, L + 16 * rb * ldl + 16 * rb, ldl, X + 16 * rb * ldx + x_col, ldx, 4 - rb, lane);
}

// The workspace the tensor-core prepare kernel writes (bf16 unless noted; K and V padded to KP, VP =
// multiples of 16). Rows are tokens on the flattened B*T axis.
struct PrepareWorkspace {
  bf16* aqk = nullptr;      // [BT, H, 64]  scale * Aqk (Eq. 24), zero above the diagonal
  bf16* y = nullptr;        // [BT, H, KP]  Y = A Ebar (Eq. 21)
  bf16* qg = nullptr;       // [BT, H, KP]  scale * Qgamma (Eq. 24)
  bf16* ktail = nullptr;    // [BT, H, KP]  Ktail (Eq. 25)
  bf16* u = nullptr;        // [BT, HV, VP] U = A Z (Eq. 22)
  bf16* a = nullptr;        // [BT, H, 64]  A = (I + T)^{-1} (Eq. 20); optional (the backward's)
  float* gamma_c = nullptr; // [slots, H, KP] gamma_C, fp32
};

// Number of chunk slots of a call (an upper bound for varlen: empty sequences have none).
inline int slot_count(const Problem& p, int N) {
  return p.cu_seqlens ? (p.T + kC - 1) / kC + N : N * ((p.T + kC - 1) / kC);
}

// Launches tc_prepare_kernel (chunk_forward_tc.cu) over every (chunk slot, key head).
void launch_tensor_core_prepare(const Problem& p, const void* q, const void* k, const void* v, const float* g,
                                const void* b, const void* w, int N, float scale, const PrepareWorkspace& ws,
                                cudaStream_t stream, const char* who);

// Phase B of the tensor-core backward: tc_state_kernel (chunk_forward_tc.cu) without the output, writing the
// chunk-start state of every chunk to `states` [slots, HV, KP, VP] and R = U - Y S_c to r_out [BT, HV, VP], both
// bf16 as its products used them; vt (16 or 32) is its value tile.
void launch_tensor_core_states(const Problem& p, const float* h0, int N, const PrepareWorkspace& ws, int vt,
                               bf16* states, bf16* r_out, cudaStream_t stream, const char* who);

}  // namespace gdr2::cuda::detail::tc
