#pragma once
// gdr2 CUDA kernels: plain C++ host API (no framework). Device pointers in, device pointers out.
//
// Layout (spec section 1), all row-major, last index fastest:
//   q, k, b   [B, T, H, K]   in `dtype`          g        [B, T, H, K]  fp32 (log-decay)
//   v, w, o   [B, T, HV, V]  in `dtype`          h0, ht   [N, HV, K, V] fp32
// Grouped value heads: HV % H == 0, value head hv reads key head hv / (HV / H).
// Variable length: B == 1 and cu_seqlens (device, N + 1 int32 offsets, cu_seqlens[N] == T).
// Every CUDA call and launch is checked; failures throw gdr2::cuda::error naming the kernel, the
// argument and what CUDA said. Shape and alignment preconditions are checked on the host first.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

typedef struct CUstream_st* cudaStream_t;  // the CUDA runtime's stream handle (no runtime header needed)

namespace gdr2::cuda {

class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class DType { f32, bf16, f16 };
// accurate: fp32-class accuracy (relative error < 1e-5 against the double reference on typical inputs).
// fast: bf16 tensor-core operands with fp32 accumulation (relative error ~2^-9 per operand rounding) for
// bf16/f16 inputs, in chunk_forward with K <= 128 and in chunk_backward with K, V <= 128; otherwise the fp32
// kernels (cuda/README.md, "Precision modes").
enum class Mode { fast, accurate };

struct Problem {
  int B = 1, T = 0, H = 1, HV = 1, K = 128, V = 128;
  DType dtype = DType::bf16;                 // q, k, v, b, w, o (and dq, dk, dv, db, dw, dout)
  float scale = 0.0f;                        // 0 means 1/sqrt(K)
  const std::int32_t* cu_seqlens = nullptr;  // device pointer or nullptr (then N = B)
  int num_seqs = 0;                          // N, required when cu_seqlens is given
};

struct ForwardTensors {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const float* g = nullptr;
  const void* b = nullptr;
  const void* w = nullptr;
  const float* h0 = nullptr;  // optional initial state; nullptr = zeros. May equal ht (in place).
  void* o = nullptr;
  float* ht = nullptr;        // optional final state; nullptr = not written
};

struct BackwardTensors {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const float* g = nullptr;
  const void* b = nullptr;
  const void* w = nullptr;
  const float* h0 = nullptr;    // optional
  const void* dout = nullptr;   // [B, T, HV, V] in dtype
  const float* dht = nullptr;   // optional gradient of the final state
  void* dq = nullptr;           // [B, T, H, K]  in dtype (summed over the value heads of a group)
  void* dk = nullptr;
  float* dg = nullptr;          // [B, T, H, K]  fp32
  void* db = nullptr;
  void* dv = nullptr;           // [B, T, HV, V] in dtype
  void* dw = nullptr;
  float* dh0 = nullptr;         // optional, [N, HV, K, V]
};

// True when a CUDA device is present and usable (tests skip with "skipped: no CUDA device" otherwise).
bool device_available();
std::string device_name();

// Workspace memory. The chunk kernels' temporary buffers (about 0.3 GB for the fast forward at B=4, T=4096,
// H=16, K=V=128) are stream-ordered allocations from a memory pool that gdr2 owns, one per device. The pool keeps
// freed memory for the next call (as a framework's caching allocator does) instead of handing it back to the
// driver at every synchronisation, which would map the memory again on every call (cuda/README.md, "Workspace").
// workspace_pool_bytes(): device memory the current device's pool holds now (0 before its first use);
// trim_workspace_pool(): gives the unused part back (call it after synchronising the streams that used it).
std::size_t workspace_pool_bytes();
void trim_workspace_pool();

// Token-by-token forward (decode: T = 1, h0 == ht updates the state in place). Any K, V <= 256. Decode
// steps over many states run a kernel that streams the states through shared memory; the result is bit for
// bit the same as the token-by-token kernel's (cuda/README.md).
void recurrent_forward(const Problem& p, const ForwardTensors& x, cudaStream_t stream = nullptr);

// Chunkwise WY forward, chunk 64. K, V in {16, 32, 64, 128, 256} (see docs for the limits).
void chunk_forward(const Problem& p, const ForwardTensors& x, Mode mode, cudaStream_t stream = nullptr);

// Gate-aware chunkwise backward (spec section 6): dq, dk, dv, dg, db, dw, dh0 from dout and dht.
void chunk_backward(const Problem& p, const BackwardTensors& x, Mode mode, cudaStream_t stream = nullptr);

namespace detail {
struct SavedForwardAccess;
}
// What a training step's forward keeps for its backward (cuDNN's "reserve space"). On the tensor-core path
// (Mode::fast, bf16/f16 inputs, 16 <= K <= 128, V <= 128, an sm_90-class device) the backward's first two phases
// recompute the forward's state-free intermediates and its chunk-start states; a forward given a SavedForward
// stores them (it computes them anyway), and a backward given the same object starts after them. Memory: the
// bf16 intermediates (Aqk, A, Y, Qgamma, Ktail, U), the chunk-start states and R, 514 MiB at B=4, T=4096,
// H=16, K=V=128 (device_bytes()); the time saved is the prepare kernel and the state pass (cuda/README.md).
// Elsewhere (Mode::accurate, fp32 inputs, larger heads, sm_80) the forward leaves it unfilled and the backward
// recomputes as without it. Results are the same bit for bit either way.
// The backward checks that it repeats the forward's problem, mode and input pointers (q, k, v, g, b, w, h0) and
// throws gdr2::cuda::error naming the first difference; the tensors' contents must not change in between, and
// the backward must be ordered after the forward (same stream, or an event). The device buffer is allocated with
// cudaMalloc on first use, kept (and grown when needed) across calls, and freed by release() or the destructor.
class SavedForward {
 public:
  SavedForward() = default;
  ~SavedForward();
  SavedForward(SavedForward&& other) noexcept;
  SavedForward& operator=(SavedForward&& other) noexcept;
  SavedForward(const SavedForward&) = delete;
  SavedForward& operator=(const SavedForward&) = delete;
  bool filled() const { return filled_; }               // a forward stored its intermediates here
  std::size_t device_bytes() const { return capacity_; }  // device memory held
  void release();                                        // frees the device memory; filled() becomes false

 private:
  friend struct detail::SavedForwardAccess;
  void* data_ = nullptr;
  std::size_t capacity_ = 0;
  bool filled_ = false;
  Problem problem_{};            // of the forward that filled it
  Mode mode_ = Mode::fast;
  const void* inputs_[7] = {};  // its q, k, v, g, b, w, h0
};
// chunk_forward that fills `saved` (when the tensor-core path applies), and chunk_backward that uses it.
void chunk_forward(const Problem& p, const ForwardTensors& x, Mode mode, SavedForward& saved,
                   cudaStream_t stream = nullptr);
void chunk_backward(const Problem& p, const BackwardTensors& x, Mode mode, const SavedForward& saved,
                    cudaStream_t stream = nullptr);

}  // namespace gdr2::cuda
