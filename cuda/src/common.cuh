#pragma once
// Shared by every gdr2 CUDA translation unit: checked CUDA calls, dtype loads/stores, layout indexing,
// host-side argument checks. Internal header (not installed).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <sstream>
#include <string>

#include "gdr2/cuda.hpp"

namespace gdr2::cuda::detail {

// ---- errors -------------------------------------------------------------------------------------

template <class... Parts>
[[noreturn]] inline void fail(const Parts&... parts) {
  std::ostringstream s;
  (s << ... << parts);
  throw gdr2::cuda::error(s.str());
}

// Throws gdr2::cuda::error "<who>: <what>: <CUDA error name> (<CUDA message>)" unless status is success.
inline void check(cudaError_t status, const char* who, const char* what) {
  if (status != cudaSuccess)
    fail(who, ": ", what, ": ", cudaGetErrorName(status), " (", cudaGetErrorString(status), ")");
}

// After a kernel launch: launch-configuration errors (and sticky errors of earlier work) are reported
// naming the kernel. Asynchronous faults surface at the caller's next synchronising CUDA call.
inline void check_launch(const char* who, const char* kernel) {
  check(cudaGetLastError(), who, (std::string("launch of kernel ") + kernel).c_str());
}

#define GDR2_CUDA_CHECK(call, who) ::gdr2::cuda::detail::check((call), (who), #call)

// ---- dtype ---------------------------------------------------------------------------------------

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
  }
  return "?";
}
inline std::size_t dtype_size(DType t) { return t == DType::f32 ? 4 : 2; }

template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<__nv_bfloat16> { static constexpr DType value = DType::bf16; };
template <> struct dtype_of<__half> { static constexpr DType value = DType::f16; };

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <class T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

template <class T> struct type_tag { using type = T; };
// Calls f(type_tag<T>{}) with T the storage type of dtype (one kernel instance per dtype); in f:
// `using T = typename decltype(tag)::type;`.
template <class F>
void dispatch_dtype(DType t, F&& f) {
  switch (t) {
    case DType::f32: f(type_tag<float>{}); return;
    case DType::bf16: f(type_tag<__nv_bfloat16>{}); return;
    case DType::f16: f(type_tag<__half>{}); return;
  }
  fail("gdr2::cuda: unknown dtype ", static_cast<int>(t));
}

// ---- layout ----------------------------------------------------------------------------------------
// Tokens are addressed on the flattened B*T axis: sequence n covers [bos, eos) with bos = n*T (dense)
// or cu_seqlens[n] (packed, B = 1). Key-side tensors [.., H, K], value-side [.., HV, V], states
// [N, HV, K, V].

struct SeqRange {
  std::int64_t bos, eos;
};
__device__ __forceinline__ SeqRange sequence_range(const std::int32_t* cu_seqlens, int n, int T) {
  if (cu_seqlens) return {cu_seqlens[n], cu_seqlens[n + 1]};
  return {static_cast<std::int64_t>(n) * T, static_cast<std::int64_t>(n + 1) * T};
}

// The current device's workspace pool (created on first use; release threshold: keep everything, so that a
// call's workspace is reused by the next instead of being unmapped at each synchronisation).
cudaMemPool_t workspace_pool(const char* who);

// Owns a stream-ordered device allocation from the workspace pool (freed with cudaFreeAsync on the same
// stream, also when an exception unwinds).

class StreamBuffer {
 public:
  StreamBuffer(std::size_t bytes, cudaStream_t stream, const char* who) : stream_(stream) {
    if (bytes)
      check(cudaMallocFromPoolAsync(&ptr_, bytes, workspace_pool(who), stream), who,
            "cudaMallocFromPoolAsync(workspace)");
  }
  ~StreamBuffer() { if (ptr_) cudaFreeAsync(ptr_, stream_); }
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;
  template <class E> E* as() const { return static_cast<E*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

// ---- host-side validation (shared by forward and backward) -------------------------------------------

struct Validated {
  int N = 0;        // number of sequences
  float scale = 0;  // effective scale
};

// Checks shapes, the GVA ratio, scale, pointer presence and alignment, and (when given) the
// cu_seqlens offsets (copied to the host: one small synchronous copy). `who` names the entry point.
Validated validate_problem(const Problem& p, const char* who);
void require_pointer(const void* ptr, const char* who, const char* name);
void require_alignment(const void* ptr, std::size_t bytes, const char* who, const char* name);
// Pointers of a forward call: required ones present (when T > 0), every one aligned to its element size,
// h0 and ht equal or disjoint (N = number of sequences: a partial overlap would let one block read state
// that another block already overwrote).
void validate_forward_tensors(const Problem& p, const ForwardTensors& x, int N, const char* who);

}  // namespace gdr2::cuda::detail
