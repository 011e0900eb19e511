#pragma once
// The per-element arithmetic of one recurrent token step (spec section 2, Eq. 8-10), shared by the two
// recurrent kernels (recurrent.cu: state tiles of 32 columns; recurrent_stream.cu: whole states streamed
// through shared memory). Both split the K rows of a state column into the same kWarps groups of KR rows,
// sum each group in row order with these functions and the groups in warp order, so they compute the same
// fp32 operations in the same order and agree bit for bit: a decode step (T = 1, one kernel) and one long
// call (the other kernel) give identical o and final state (test CudaForward.DecodeStepByStepEqualsOneLongCall).
// Every operation is an explicitly rounded intrinsic, so the compiler cannot contract a product and a sum
// into an FMA in one kernel and not in the other.
#include <cuda_runtime.h>

namespace gdr2::cuda::detail::recurrent {

constexpr int kWarps = 8;  // row groups of a state column (the default block shape of both kernels)

// Rows per warp: KR = ceil(K / warps) rounded up to a power of two (4 at least).
__host__ __device__ constexpr int rows_per_warp(int K, int warps) {
  const int rows = (K + warps - 1) / warps;
  int kr = 4;
  while (kr < rows) kr *= 2;
  return kr;
}

// Key-side vectors of the token: alpha_t = exp(g_t), e_t = b_t * k_t (Eq. 8-9).
__device__ __forceinline__ float decay_of(float g) { return expf(g); }
__device__ __forceinline__ float erase_of(float b, float k) { return __fmul_rn(b, k); }
// z_t = w_t * v_t.
__device__ __forceinline__ float write_of(float w, float v) { return __fmul_rn(w, v); }

// Eq. 8 and 9 for one state element S[d][c]: Sbar = alpha_d S, and its term of r_c = sum_d Sbar[d][c] e_d.
__device__ __forceinline__ void decay_and_read(float& s, float alpha, float erase, float& read_partial) {
  s = __fmul_rn(s, alpha);
  read_partial = __fmaf_rn(s, erase, read_partial);
}

// Eq. 10 for one state element: S = Sbar + k_d (z_c - r_c), and its term of o_c = sum_d S[d][c] q_d.
__device__ __forceinline__ void edit_and_query(float& s, float key, float delta, float query, float& out_partial) {
  s = __fmaf_rn(key, delta, s);
  out_partial = __fmaf_rn(s, query, out_partial);
}

// z_c - r_c, r_c summed over the warps' partials in warp order (partials[j * stride]).
template <int kParts>
__device__ __forceinline__ float delta_of(float written, const float* partials, int stride) {
  float read = 0.0f;
#pragma unroll
  for (int j = 0; j < kParts; ++j) read = __fadd_rn(read, partials[j * stride]);
  return __fsub_rn(written, read);
}

// o_c = scale * sum over the warps' partials in warp order.
template <int kParts>
__device__ __forceinline__ float output_of(float scale, const float* partials, int stride) {
  float out = 0.0f;
#pragma unroll
  for (int j = 0; j < kParts; ++j) out = __fadd_rn(out, partials[j * stride]);
  return __fmul_rn(scale, out);
}

}  // namespace gdr2::cuda::detail::recurrent
