#pragma once
// Testbed for the CUDA kernels (host C++; link gdr2::cuda and CUDA::cudart): device buffers, upload and
// download with dtype conversion, a random gdr2::Batch<double> on the device, and the reference on the
// same rounded inputs. Shared by the forward and backward GPU tests and the benchmarks.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <gdr2/batched.hpp>
#include <gdr2/cuda.hpp>

#include "tensor_core_model.hpp"

namespace gdr2_test::cuda {

using gdr2::cuda::DType;

inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string("cuda_testbed: ") + what + ": " + cudaGetErrorName(status) + " (" +
                             cudaGetErrorString(status) + ")");
}

inline std::size_t dtype_bytes(DType t) { return t == DType::f32 ? 4 : 2; }
inline const char* dtype_label(DType t) { return t == DType::f32 ? "f32" : t == DType::bf16 ? "bf16" : "f16"; }

// Round a double to the storage type (what the device will see), back to double.
inline double round_to(double x, DType t) {
  switch (t) {
    case DType::f32: return static_cast<double>(static_cast<float>(x));
    case DType::bf16: return static_cast<double>(static_cast<float>(Eigen::bfloat16(static_cast<float>(x))));
    case DType::f16: return static_cast<double>(static_cast<float>(Eigen::half(static_cast<float>(x))));
  }
  return x;
}
inline std::vector<double> round_to(std::vector<double> x, DType t) {
  for (auto& e : x) e = round_to(e, t);
  return x;
}
// Unit roundoff 2^-p of the storage type (p significand bits: f32 24, bf16 8, f16 11): the relative
// rounding error bound of one stored value.
inline double unit_roundoff(DType t) { return t == DType::f32 ? 0x1p-24 : t == DType::bf16 ? 0x1p-8 : 0x1p-11; }

// Owning device allocation (cudaMalloc / cudaFree).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t bytes) : bytes_(bytes) {
    if (bytes) check(cudaMalloc(&ptr_, bytes), "cudaMalloc");
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { release(); }

  void* get() const { return ptr_; }
  template <class T> T* as() const { return static_cast<T*>(ptr_); }
  std::size_t bytes() const { return bytes_; }
  void fill_bytes(int value) { if (bytes_) check(cudaMemset(ptr_, value, bytes_), "cudaMemset"); }

 private:
  void release() { if (ptr_) cudaFree(ptr_); ptr_ = nullptr; }
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

// Upload doubles converted to dtype (round to nearest even).
inline DeviceBuffer upload(const std::vector<double>& x, DType t) {
  DeviceBuffer d(x.size() * dtype_bytes(t));
  if (x.empty()) return d;
  std::vector<unsigned char> host(d.bytes());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const float f = static_cast<float>(x[i]);
    if (t == DType::f32) std::memcpy(&host[4 * i], &f, 4);
    else if (t == DType::bf16) { const Eigen::bfloat16 h(f); std::memcpy(&host[2 * i], &h, 2); }
    else { const Eigen::half h(f); std::memcpy(&host[2 * i], &h, 2); }
  }
  check(cudaMemcpy(d.get(), host.data(), host.size(), cudaMemcpyHostToDevice), "cudaMemcpy(host -> device)");
  return d;
}

inline std::vector<double> download(const DeviceBuffer& d, std::size_t count, DType t) {
  std::vector<double> x(count);
  if (count == 0) return x;
  std::vector<unsigned char> host(count * dtype_bytes(t));
  check(cudaMemcpy(host.data(), d.get(), host.size(), cudaMemcpyDeviceToHost), "cudaMemcpy(device -> host)");
  for (std::size_t i = 0; i < count; ++i) {
    if (t == DType::f32) { float f; std::memcpy(&f, &host[4 * i], 4); x[i] = f; }
    else if (t == DType::bf16) { Eigen::bfloat16 h; std::memcpy(&h, &host[2 * i], 2); x[i] = static_cast<float>(h); }
    else { Eigen::half h; std::memcpy(&h, &host[2 * i], 2); x[i] = static_cast<float>(h); }
  }
  return x;
}

// A Batch<double> on the device: q, k, v, b, w in dtype; g, h0 and the outputs' states in fp32.
struct DeviceBatch {
  gdr2::cuda::Problem problem;
  DeviceBuffer q, k, v, g, b, w, h0, o, ht, cu_seqlens;
  std::size_t o_count = 0, state_count = 0;

  gdr2::cuda::ForwardTensors forward_tensors() const {
    gdr2::cuda::ForwardTensors x;
    x.q = q.get(); x.k = k.get(); x.v = v.get(); x.g = g.as<float>(); x.b = b.get(); x.w = w.get();
    x.h0 = h0.bytes() ? h0.as<float>() : nullptr;
    x.o = o.get();
    x.ht = ht.as<float>();
    return x;
  }
  std::vector<double> output() const { return download(o, o_count, problem.dtype); }
  std::vector<double> final_state() const { return download(ht, state_count, DType::f32); }
};

// The batch as the device sees it: q, k, v, b, w rounded to dtype; g and h0 rounded to fp32. Run the
// double reference on this, so a comparison measures the kernel's arithmetic, not input rounding.
inline gdr2::Batch<double> rounded_for_device(gdr2::Batch<double> x, DType t) {
  x.q = round_to(std::move(x.q), t); x.k = round_to(std::move(x.k), t); x.v = round_to(std::move(x.v), t);
  x.b = round_to(std::move(x.b), t); x.w = round_to(std::move(x.w), t);
  x.g = round_to(std::move(x.g), DType::f32); x.h0 = round_to(std::move(x.h0), DType::f32);
  x.scale = round_to(x.scale, DType::f32);
  return x;
}

inline DeviceBatch to_device(const gdr2::Batch<double>& x, DType t) {
  DeviceBatch d;
  auto& p = d.problem;
  p.B = static_cast<int>(x.B); p.T = static_cast<int>(x.T); p.H = static_cast<int>(x.H);
  p.HV = static_cast<int>(x.HV); p.K = static_cast<int>(x.K); p.V = static_cast<int>(x.V);
  p.dtype = t;
  p.scale = static_cast<float>(x.scale);
  d.q = upload(x.q, t); d.k = upload(x.k, t); d.v = upload(x.v, t); d.b = upload(x.b, t); d.w = upload(x.w, t);
  d.g = upload(x.g, DType::f32);
  if (!x.h0.empty()) d.h0 = upload(x.h0, DType::f32);
  if (!x.cu_seqlens.empty()) {
    std::vector<std::int32_t> offsets(x.cu_seqlens.begin(), x.cu_seqlens.end());
    d.cu_seqlens = DeviceBuffer(offsets.size() * 4);
    check(cudaMemcpy(d.cu_seqlens.get(), offsets.data(), offsets.size() * 4, cudaMemcpyHostToDevice),
          "cudaMemcpy(cu_seqlens)");
    p.cu_seqlens = d.cu_seqlens.as<std::int32_t>();
    p.num_seqs = static_cast<int>(offsets.size()) - 1;
  }
  d.o_count = x.v.size();
  d.state_count = static_cast<std::size_t>(x.num_sequences() * x.HV * x.K * x.V);
  d.o = DeviceBuffer(d.o_count * dtype_bytes(t));
  d.ht = DeviceBuffer(d.state_count * 4);
  d.o.fill_bytes(0xFF);   // NaN pattern: an output the kernel forgets to write cannot pass
  d.ht.fill_bytes(0xFF);
  return d;
}

// The batch converted to another scalar (for the reference in float: the tolerance calibration).
template <class To>
gdr2::Batch<To> cast_batch(const gdr2::Batch<double>& x) {
  gdr2::Batch<To> y;
  y.B = x.B; y.T = x.T; y.H = x.H; y.HV = x.HV; y.K = x.K; y.V = x.V;
  auto conv = [](const std::vector<double>& a) {
    std::vector<To> b(a.size());
    for (std::size_t i = 0; i < a.size(); ++i) b[i] = static_cast<To>(a[i]);
    return b;
  };
  y.q = conv(x.q); y.k = conv(x.k); y.g = conv(x.g); y.b = conv(x.b); y.v = conv(x.v); y.w = conv(x.w);
  y.h0 = conv(x.h0);
  y.cu_seqlens = x.cu_seqlens;
  y.scale = static_cast<To>(x.scale);
  return y;
}

template <class S>
std::vector<double> to_doubles(const std::vector<S>& a) {
  std::vector<double> b(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) b[i] = static_cast<double>(a[i]);
  return b;
}

// Sets (value) or unsets (nullptr) an environment variable for a scope, restoring the old value.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    if (value) setenv(name, value, 1); else unsetenv(name);
  }
  ~ScopedEnv() { if (had_) setenv(name_.c_str(), old_.c_str(), 1); else unsetenv(name_.c_str()); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_, old_;
  bool had_ = false;
};

// Relative Frobenius error ||a - b|| / ||b|| of flat tensors (||a - b|| when b = 0; inf on size mismatch
// or a non-finite entry in a).
inline double relative_error(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return std::numeric_limits<double>::infinity();
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

// ---- forward comparison ----------------------------------------------------------------------------
// One comparison of a CUDA forward kernel against the double reference, with its calibrated tolerance.
//
// Oracle: gdr2::batched_forward in double (token by token) on the inputs exactly as the device sees
// them (q, k, v, b, w rounded to the storage dtype, g and h0 to fp32), so the comparison measures only
// the kernel's arithmetic and its output rounding.
// Tolerance (relative Frobenius error), derived term by term:
//   output o:     u(dtype) + 10 * e_f(o)    u = unit roundoff of the output dtype (storing o rounds every
//                                            entry by at most u relative, so the Frobenius error by <= u);
//                                            e_f = error of the same reference run in float on the same
//                                            inputs (the error an fp32 implementation of the operator makes
//                                            here), times 10 for a different summation order and a
//                                            different (chunkwise) association.
//   final state:  10 * e_f(ht) (the state stays fp32), floored at 1e-7.
// For the chunk kernels e_f is the larger of the float token-by-token and float chunkwise references.
// The tensor-core path (chunk/fast on bf16 or f16 inputs with K <= 128) rounds every matrix-product
// operand to bf16 (unit roundoff 2^-9) and accumulates in fp32. Its bound adds 3 * e_tc, e_tc = error of
// the host model of that path (tensor_core_model.hpp: the same algorithm, rounded to bf16 at the same
// points): the kernel makes the same roundings of the same size, in another fp32 accumulation order, and
// an operand whose fp32 value differs in its last bits may round the other way; 3 leaves room for those
// independent errors not to cancel as the model's do.


enum class Kernel { recurrent, chunk_accurate, chunk_fast };
// Whether chunk_forward(Mode::fast) runs the bf16 tensor-core path (cuda/src/chunk_forward_tc.cuh).
inline bool uses_tensor_cores(DType t, int K) { return t != DType::f32 && K <= 128; }
inline const char* kernel_label(Kernel k) {
  return k == Kernel::recurrent ? "recurrent" : k == Kernel::chunk_accurate ? "chunk/accurate" : "chunk/fast";
}

inline void launch(Kernel kernel, const gdr2::cuda::Problem& p, const gdr2::cuda::ForwardTensors& x) {
  switch (kernel) {
    case Kernel::recurrent: gdr2::cuda::recurrent_forward(p, x); break;
    case Kernel::chunk_accurate: gdr2::cuda::chunk_forward(p, x, gdr2::cuda::Mode::accurate); break;
    case Kernel::chunk_fast: gdr2::cuda::chunk_forward(p, x, gdr2::cuda::Mode::fast); break;
  }
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize after the kernel");
}

struct Comparison {
  double err_o = 0, err_ht = 0;      // kernel vs double reference
  double float_o = 0, float_ht = 0;  // float reference vs double reference (calibration)
  double model_o = 0, model_ht = 0;  // tensor-core model vs double reference (tensor-core calibration)
  double tol_o = 0, tol_ht = 0;
  std::string describe() const {
    return "err(o) = " + std::to_string(err_o) + " (tol " + std::to_string(tol_o) + ", float ref " +
           std::to_string(float_o) + ", tc model " + std::to_string(model_o) + "), err(ht) = " + std::to_string(err_ht) +
           " (tol " + std::to_string(tol_ht) + ", float ref " + std::to_string(float_ht) + ", tc model " +
           std::to_string(model_ht) + ")";
  }
  bool passes() const { return err_o <= tol_o && err_ht <= tol_ht; }
};

// Calibrated tolerances for `kernel` on `rounded` (already rounded for the device) in dtype t.
inline Comparison calibrate(const gdr2::Batch<double>& rounded, const gdr2::BatchedForward<double>& ref, DType t,
                            Kernel kernel) {
  Comparison c;
  const auto as_float = cast_batch<float>(rounded);
  const auto f = gdr2::batched_forward(as_float, gdr2::Form::recurrent);
  c.float_o = relative_error(to_doubles(f.o), ref.o);
  c.float_ht = relative_error(to_doubles(f.ht), ref.ht);
  if (kernel != Kernel::recurrent) {
    const auto fc = gdr2::batched_forward(as_float, gdr2::Form::chunkwise, 64);
    c.float_o = std::max(c.float_o, relative_error(to_doubles(fc.o), ref.o));
    c.float_ht = std::max(c.float_ht, relative_error(to_doubles(fc.ht), ref.ht));
  }
  c.tol_o = unit_roundoff(t) + 10 * c.float_o;
  c.tol_ht = std::max(1e-7, 10 * c.float_ht);
  if (kernel == Kernel::chunk_fast && uses_tensor_cores(t, rounded.K)) {
    const auto model = tensor_core_model(rounded);
    c.model_o = relative_error(model.o, ref.o);
    c.model_ht = relative_error(model.ht, ref.ht);
    c.tol_o += 3 * c.model_o;
    c.tol_ht = std::max(c.tol_ht, 3 * c.model_ht);
  }
  return c;
}

// Runs the kernel on batch (converted to dtype t) and compares o and the final state with the reference.
// `tamper` (optional) edits the device inputs before the launch: the negative controls.
inline Comparison compare_forward(const gdr2::Batch<double>& batch, DType t, Kernel kernel,
                                  const std::function<void(DeviceBatch&)>& tamper = {}) {
  const auto rounded = rounded_for_device(batch, t);
  const auto ref = gdr2::batched_forward(rounded, gdr2::Form::recurrent);
  Comparison c = calibrate(rounded, ref, t, kernel);
  DeviceBatch d = to_device(batch, t);
  if (tamper) tamper(d);
  launch(kernel, d.problem, d.forward_tensors());
  c.err_o = relative_error(d.output(), ref.o);
  c.err_ht = relative_error(d.final_state(), ref.ht);
  return c;
}

}  // namespace gdr2_test::cuda
