// Token-by-token forward (spec section 2, Eq. 8-10), fp32 state, any T (decode: T = 1, h0 == ht): the tiled
// kernel, and the entry point that chooses between it and the streaming kernel of recurrent_stream.cu.
//
// Work split: one block per (32-column tile of V, value head hv, sequence n), WARPS warps. Lane = state
// column c (so state loads/stores are coalesced); warp j holds rows [j*KR, (j+1)*KR) of that column in
// registers (KR = ceil(K/WARPS) rounded up to a power of two). Per token the key-side vectors are staged in
// shared memory and the two reductions over K (r_t and o_t) go through shared memory, warp partials summed
// in warp order (recurrent_step.cuh, shared with the streaming kernel).
// WARPS = 8 by default: 16 state rows per thread at K = 128 (64 registers, 50% occupancy) instead of 32 with
// 4 warps (95 registers, 31%). Measured on an H100 (docs/performance.md): the long-sequence forward at B=4,
// T=4096 takes 7.2 ms instead of 8.8 ms. GDR2_CUDA_RECURRENT_WARPS=4|8 forces one (the tests cover both; the
// benchmark compares them). With 8 warps the streaming kernel does the same arithmetic, so whichever kernel
// runs a T = 1 step or a long call, the results agree bit for bit.
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "common.cuh"
#include "recurrent_step.cuh"
#include "recurrent_stream.cuh"

namespace gdr2::cuda {
namespace {
using namespace detail;

constexpr int kColumns = 32;

template <class T, int KR, int kWarps>
__global__ void __launch_bounds__(kWarps * 32)
recurrent_forward_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                         const float* __restrict__ g, const T* __restrict__ b, const T* __restrict__ w,
                         const float* h0, T* __restrict__ o, float* ht, const std::int32_t* __restrict__ cu_seqlens,
                         int T_, int H, int HV, int K, int V, float scale) {
  extern __shared__ float smem[];
  float* s_alpha = smem;          // exp(g_t)        [K]
  float* s_erase = s_alpha + K;   // e_t = b_t * k_t [K]
  float* s_key = s_erase + K;     // k_t             [K]
  float* s_query = s_key + K;     // q_t             [K]
  __shared__ float s_read[kWarps][kColumns];  // partial r_t per warp
  __shared__ float s_out[kWarps][kColumns];   // partial o_t per warp

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int c = blockIdx.x * kColumns + lane;
  const int hv = blockIdx.y, n = blockIdx.z;
  const int h = hv / (HV / H);
  const bool column_ok = c < V;
  const SeqRange seq = sequence_range(cu_seqlens, n, T_);

  float state[KR];  // S[warp*KR + i][c]
  const std::size_t state_base = (static_cast<std::size_t>(n) * HV + hv) * K * V;
#pragma unroll
  for (int i = 0; i < KR; ++i) {
    const int d = warp * KR + i;
    state[i] = (h0 != nullptr && column_ok && d < K) ? h0[state_base + static_cast<std::size_t>(d) * V + c] : 0.0f;
  }

  for (std::int64_t t = seq.bos; t < seq.eos; ++t) {
    const std::size_t key_at = (static_cast<std::size_t>(t) * H + h) * K;
    for (int d = threadIdx.x; d < K; d += blockDim.x) {
      const float kd = to_float(k[key_at + d]);
      s_alpha[d] = recurrent::decay_of(g[key_at + d]);          // alpha_t = exp(g_t)
      s_erase[d] = recurrent::erase_of(to_float(b[key_at + d]), kd);  // e_t = b_t * k_t
      s_key[d] = kd;
      s_query[d] = to_float(q[key_at + d]);
    }
    const std::size_t value_at = (static_cast<std::size_t>(t) * HV + hv) * V + c;
    const float written = column_ok ? recurrent::write_of(to_float(w[value_at]), to_float(v[value_at])) : 0.0f;
    __syncthreads();
    float partial = 0.0f;
#pragma unroll
    for (int i = 0; i < KR; ++i) {
      const int d = warp * KR + i;
      if (d < K) recurrent::decay_and_read(state[i], s_alpha[d], s_erase[d], partial);  // Eq. 8-9
    }
    s_read[warp][lane] = partial;
    __syncthreads();
    const float delta = recurrent::delta_of<kWarps>(written, &s_read[0][lane], kColumns);  // z_t - r_t
    partial = 0.0f;
#pragma unroll
    for (int i = 0; i < KR; ++i) {
      const int d = warp * KR + i;
      if (d < K) recurrent::edit_and_query(state[i], s_key[d], delta, s_query[d], partial);  // Eq. 10, o_t
    }
    s_out[warp][lane] = partial;
    __syncthreads();
    if (warp == 0 && column_ok) o[value_at] = from_float<T>(recurrent::output_of<kWarps>(scale, &s_out[0][lane], kColumns));
  }
  if (ht != nullptr && column_ok) {
#pragma unroll
    for (int i = 0; i < KR; ++i) {
      const int d = warp * KR + i;
      if (d < K) ht[state_base + static_cast<std::size_t>(d) * V + c] = state[i];
    }
  }
}

template <class T, int KR, int kWarps>
void launch_recurrent(const Problem& p, const ForwardTensors& x, int N, float scale, cudaStream_t stream) {
  const dim3 grid((p.V + kColumns - 1) / kColumns, p.HV, N);
  const std::size_t shared = 4 * static_cast<std::size_t>(p.K) * sizeof(float);
  recurrent_forward_kernel<T, KR, kWarps><<<grid, kWarps * 32, shared, stream>>>(
      static_cast<const T*>(x.q), static_cast<const T*>(x.k), static_cast<const T*>(x.v), x.g,
      static_cast<const T*>(x.b), static_cast<const T*>(x.w), x.h0, static_cast<T*>(x.o), x.ht, p.cu_seqlens, p.T,
      p.H, p.HV, p.K, p.V, scale);
  detail::check_launch("gdr2::cuda::recurrent_forward", "recurrent_forward_kernel");
}

// Rows per warp KR = ceil(K / kWarps) rounded up to a power of two (K <= 256).
template <class T, int kWarps>
void dispatch_rows(const Problem& p, const ForwardTensors& x, int N, float scale, cudaStream_t stream) {
  switch (recurrent::rows_per_warp(p.K, kWarps)) {
    case 4: launch_recurrent<T, 4, kWarps>(p, x, N, scale, stream); break;
    case 8: launch_recurrent<T, 8, kWarps>(p, x, N, scale, stream); break;
    case 16: launch_recurrent<T, 16, kWarps>(p, x, N, scale, stream); break;
    case 32: launch_recurrent<T, 32, kWarps>(p, x, N, scale, stream); break;
    default: launch_recurrent<T, 64, kWarps>(p, x, N, scale, stream); break;
  }
}

}  // namespace

void recurrent_forward(const Problem& p, const ForwardTensors& x, cudaStream_t stream) {
  using namespace detail;
  const char* who = "gdr2::cuda::recurrent_forward";
  const Validated checked = validate_problem(p, who);
  if (p.K > 256 || p.V > 256)
    fail(who, ": K and V must be <= 256 (state column held in registers), got K = ", p.K, ", V = ", p.V);
  validate_forward_tensors(p, x, checked.N, who);
  int warps = 8;
  if (const char* forced = std::getenv("GDR2_CUDA_RECURRENT_WARPS")) {
    if (std::strcmp(forced, "4") == 0) warps = 4;
    else if (std::strcmp(forced, "8") != 0) fail(who, ": GDR2_CUDA_RECURRENT_WARPS must be 4 or 8, got '", forced, "'");
  }
  // Which kernel: GDR2_CUDA_RECURRENT_KERNEL=tiled|stream forces one; by default the streaming kernel
  // (recurrent_stream.cu) takes decode-shaped calls (at most one token per sequence on average) with at
  // least one (sequence, value head) state per SM, when it supports the shape; the tiled kernel takes
  // everything else (long sequences, and few states, where its four blocks per state spread the traffic
  // over more SMs). Both do the same arithmetic bit for bit (8 warps).
  const char* forced_kernel = std::getenv("GDR2_CUDA_RECURRENT_KERNEL");
  if (forced_kernel && std::strcmp(forced_kernel, "tiled") != 0 && std::strcmp(forced_kernel, "stream") != 0)
    fail(who, ": GDR2_CUDA_RECURRENT_KERNEL must be tiled or stream, got '", forced_kernel, "'");
  const bool force_stream = forced_kernel && std::strcmp(forced_kernel, "stream") == 0;
  int device = 0, sms = 0;
  check(cudaGetDevice(&device), who, "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), who, "cudaDeviceGetAttribute(SM count)");
  const bool decode_shaped = static_cast<std::int64_t>(p.B) * p.T <= checked.N &&
                             static_cast<std::int64_t>(checked.N) * p.HV >= sms;
  bool stream_kernel = false;
  if (force_stream || (!forced_kernel && warps == 8 && decode_shaped && p.T > 0)) {
    const std::string unsupported = recurrent_stream_unsupported(p, x);
    if (force_stream && warps != 8) fail(who, ": GDR2_CUDA_RECURRENT_KERNEL=stream runs 8 warps, but GDR2_CUDA_RECURRENT_WARPS=4");
    if (force_stream && !unsupported.empty()) fail(who, ": GDR2_CUDA_RECURRENT_KERNEL=stream needs ", unsupported);
    stream_kernel = unsupported.empty();
  }
  if (stream_kernel) {
    launch_recurrent_stream(p, x, checked.N, checked.scale, stream);
    return;
  }
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (warps == 4) dispatch_rows<T, 4>(p, x, checked.N, checked.scale, stream);
    else dispatch_rows<T, 8>(p, x, checked.N, checked.scale, stream);
  });
}

}  // namespace gdr2::cuda
