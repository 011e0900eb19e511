// The built-in CUDA kernels (cuda/include/gdr2/cuda.hpp) as targets. Compiled with GDR2V_WITH_CUDA when CMake
// found nvcc (GDR2_HAVE_CUDA); offered at run time only when gdr2::cuda::device_available().
//   cuda-recurrent       token-by-token forward, fp32 inputs (contract fp32); no backward
//   cuda-chunk-fast      chunkwise forward + backward, Mode::fast, bf16 inputs (contract bf16: both run on bf16
//                        tensor cores for K, V <= 128; --contract tf32 runs it on fp32 inputs, for which
//                        Mode::fast runs the fp32 kernels)
//   cuda-chunk-accurate  chunkwise forward + backward, Mode::accurate, fp32 inputs (contract fp32)
#include <algorithm>
#include "target.hpp"

#if GDR2V_WITH_CUDA
#include <cuda_runtime_api.h>
#include <gdr2/cuda.hpp>
#endif

namespace gdr2v {

#if GDR2V_WITH_CUDA
namespace {

void check(cudaError_t e, const std::string& what, const std::string& label) {
  if (e != cudaSuccess) throw target_error("CUDA " + what + " failed on " + label + ": " + cudaGetErrorString(e));
}

// One device buffer holding a tensor's bytes (freed on scope exit).
struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  // Never a null pointer, even for an empty tensor (T = 0): an empty problem is valid input.
  DeviceBuffer(size_t n, const std::string& label) : bytes(n) {
    check(cudaMalloc(&ptr, std::max<size_t>(n, 256)), "cudaMalloc", label);
  }
  DeviceBuffer(const Tensor& t, const std::string& label) : DeviceBuffer(t.bytes.size(), label) {
    if (bytes) check(cudaMemcpy(ptr, t.bytes.data(), bytes, cudaMemcpyHostToDevice), "cudaMemcpy to device", label);
  }
  ~DeviceBuffer() { if (ptr) cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  std::vector<double> read(DType dtype, size_t count, const std::string& label) const {
    Tensor t;
    t.dtype = dtype;
    t.shape = {static_cast<std::int64_t>(count)};
    t.bytes.resize(count * dtype_size(dtype));
    if (!t.bytes.empty()) check(cudaMemcpy(t.bytes.data(), ptr, t.bytes.size(), cudaMemcpyDeviceToHost), "cudaMemcpy to host", label);
    return t.to_double();
  }
};

enum class Kind { recurrent, chunk_fast, chunk_accurate };

gdr2::cuda::DType cuda_dtype(DType d) {
  switch (d) {
    case DType::bf16: return gdr2::cuda::DType::bf16;
    case DType::f16: return gdr2::cuda::DType::f16;
    default: return gdr2::cuda::DType::f32;
  }
}

struct CudaTarget : Target {
  std::string id;
  Kind kind;
  CudaTarget(std::string i, Kind k) : id(std::move(i)), kind(k) {}
  std::string name() const override { return id; }
  std::string description() const override { return "gdr2 CUDA kernel on " + gdr2::cuda::device_name(); }
  Capabilities capabilities() const override {
    Capabilities caps;
    caps.dtypes = {DType::f32, DType::bf16, DType::f16};
    caps.grad = kind != Kind::recurrent;
    caps.varlen = true;
    caps.gva = true;
    caps.deterministic = kind == Kind::recurrent;  // chunk backward may use atomics
    return caps;
  }
  Contract default_contract() const override { return kind == Kind::chunk_fast ? Contract::bf16 : Contract::fp32; }

  Outputs run(const Case& c, DType io, const std::string& label) override {
    const auto& x = c.x;
    const auto in = input_file(c, io, false);
    gdr2::cuda::Problem p;
    p.B = static_cast<int>(x.B); p.T = static_cast<int>(x.T); p.H = static_cast<int>(x.H);
    p.HV = static_cast<int>(x.HV); p.K = static_cast<int>(x.K); p.V = static_cast<int>(x.V);
    p.dtype = cuda_dtype(io);
    p.scale = static_cast<float>(x.scale);
    std::vector<double> offsets(x.cu_seqlens.begin(), x.cu_seqlens.end());
    DeviceBuffer cu(Tensor::from_double(DType::i32, {static_cast<std::int64_t>(offsets.size())}, offsets), label);
    if (!x.cu_seqlens.empty()) { p.cu_seqlens = static_cast<const std::int32_t*>(cu.ptr); p.num_seqs = static_cast<int>(c.N()); }
    DeviceBuffer q(in.at("q"), label), k(in.at("k"), label), v(in.at("v"), label), g(in.at("g"), label),
        b(in.at("b"), label), w(in.at("w"), label);
    std::unique_ptr<DeviceBuffer> h0;
    if (in.has("h0")) h0 = std::make_unique<DeviceBuffer>(in.at("h0"), label);
    const size_t n_o = x.v.size(), n_state = static_cast<size_t>(c.N() * x.HV * x.K * x.V), n_key = x.q.size();
    DeviceBuffer o(n_o * dtype_size(io), label), ht(n_state * 4, label);
    gdr2::cuda::ForwardTensors f;
    f.q = q.ptr; f.k = k.ptr; f.v = v.ptr; f.g = static_cast<const float*>(g.ptr); f.b = b.ptr; f.w = w.ptr;
    f.h0 = h0 ? static_cast<const float*>(h0->ptr) : nullptr;
    f.o = o.ptr; f.ht = static_cast<float*>(ht.ptr);
    const auto mode = kind == Kind::chunk_fast ? gdr2::cuda::Mode::fast : gdr2::cuda::Mode::accurate;
    try {
      if (kind == Kind::recurrent) gdr2::cuda::recurrent_forward(p, f);
      else gdr2::cuda::chunk_forward(p, f, mode);
    } catch (const std::exception& e) {
      throw target_error(id + " forward failed on " + label + ": " + e.what());
    }
    check(cudaDeviceSynchronize(), "forward", label);
    Outputs out;
    out.o = o.read(io, n_o, label);
    out.ht = ht.read(DType::f32, n_state, label);
    if (c.want_grad && kind != Kind::recurrent) {
      DeviceBuffer dout(in.at("do"), label), dht(in.at("dht"), label);
      DeviceBuffer dq(n_key * dtype_size(io), label), dk(n_key * dtype_size(io), label), dg(n_key * 4, label),
          db(n_key * dtype_size(io), label), dv(n_o * dtype_size(io), label), dw(n_o * dtype_size(io), label),
          dh0(n_state * 4, label);
      gdr2::cuda::BackwardTensors t;
      t.q = q.ptr; t.k = k.ptr; t.v = v.ptr; t.g = static_cast<const float*>(g.ptr); t.b = b.ptr; t.w = w.ptr;
      t.h0 = f.h0; t.dout = dout.ptr; t.dht = static_cast<const float*>(dht.ptr);
      t.dq = dq.ptr; t.dk = dk.ptr; t.dg = static_cast<float*>(dg.ptr); t.db = db.ptr; t.dv = dv.ptr; t.dw = dw.ptr;
      t.dh0 = static_cast<float*>(dh0.ptr);
      try {
        gdr2::cuda::chunk_backward(p, t, mode);
      } catch (const std::exception& e) {
        throw target_error(id + " backward failed on " + label + ": " + e.what());
      }
      check(cudaDeviceSynchronize(), "backward", label);
      out.has_grad = true;
      out.dq = dq.read(io, n_key, label); out.dk = dk.read(io, n_key, label); out.dg = dg.read(DType::f32, n_key, label);
      out.db = db.read(io, n_key, label); out.dv = dv.read(io, n_o, label); out.dw = dw.read(io, n_o, label);
      out.dh0 = dh0.read(DType::f32, n_state, label);
    }
    return out;
  }
};

}  // namespace

std::vector<std::string> cuda_target_names(std::string* why) {
  bool available = false;
  try {
    available = gdr2::cuda::device_available();
  } catch (const std::exception& e) {
    if (why) *why = std::string("CUDA device check failed: ") + e.what();
    return {};
  }
  if (!available) {
    if (why) *why = "no CUDA device present";
    return {};
  }
  return {"cuda-recurrent", "cuda-chunk-fast", "cuda-chunk-accurate"};
}

std::unique_ptr<Target> make_cuda_target(const std::string& name) {
  if (name == "cuda-recurrent") return std::make_unique<CudaTarget>(name, Kind::recurrent);
  if (name == "cuda-chunk-fast") return std::make_unique<CudaTarget>(name, Kind::chunk_fast);
  if (name == "cuda-chunk-accurate") return std::make_unique<CudaTarget>(name, Kind::chunk_accurate);
  return nullptr;
}

#else

std::vector<std::string> cuda_target_names(std::string* why) {
  if (why) *why = "gdr2-verify was built without the CUDA targets (nvcc not found, or -DGDR2_VERIFY_CUDA=OFF)";
  return {};
}
std::unique_ptr<Target> make_cuda_target(const std::string&) { return nullptr; }

#endif

}  // namespace gdr2v
