// CUDA kernel benchmarks (issue 4): chunk forward (fast, accurate), recurrent forward, decode step, and
// forward + backward when gdr2::cuda::chunk_backward is built. Median of CUDA-event timings after warm-up.
// Inputs are generated on the device (spec section 8's regime: unit-scale q, k; g in [-5, -0.1]; b, w in
// [0, 1]); bf16 inputs, fp32 g and state, initial and final state.
// "floor" = (bytes the call must move / the device's measured copy rate) / measured time.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench.hpp"
#include "gdr2/cuda.hpp"

namespace {

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string("bench_cuda: ") + what + ": " + cudaGetErrorString(status));
}

// Owning device buffer.
struct Buffer {
  void* ptr = nullptr;
  std::size_t bytes = 0;
  explicit Buffer(std::size_t n) : bytes(n) { check(cudaMalloc(&ptr, std::max<std::size_t>(n, 1)), "cudaMalloc"); }
  ~Buffer() { cudaFree(ptr); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  template <class T> T* as() const { return static_cast<T*>(ptr); }
};

// Deterministic uniform values in [lo, hi) from a hash of the index.
__device__ float hash_uniform(std::uint64_t i, std::uint32_t salt, float lo, float hi) {
  std::uint64_t x = i * 0x9E3779B97F4A7C15ull + salt * 0xBF58476D1CE4E5B9ull;
  x ^= x >> 31; x *= 0x94D049BB133111EBull; x ^= x >> 29;
  return lo + (hi - lo) * static_cast<float>(x >> 40) * (1.0f / 16777216.0f);
}
__global__ void fill_bf16(__nv_bfloat16* x, std::size_t n, std::uint32_t salt, float lo, float hi) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x)
    x[i] = __float2bfloat16_rn(hash_uniform(i, salt, lo, hi));
}
__global__ void fill_f32(float* x, std::size_t n, std::uint32_t salt, float lo, float hi) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x)
    x[i] = hash_uniform(i, salt, lo, hi);
}

// Median milliseconds of `repeats` timed calls (CUDA events around each), after 2 warm-up calls; stops
// early (after at least 3 timed calls) once 2 s of timed calls have accumulated.
template <class F>
double median_ms(int repeats, F&& f) {
  f(); f();
  check(cudaDeviceSynchronize(), "warm-up");
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");
  std::vector<float> times;
  float total = 0;
  for (int i = 0; i < repeats; ++i) {
    check(cudaEventRecord(start), "cudaEventRecord");
    f();
    check(cudaEventRecord(stop), "cudaEventRecord");
    check(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    times.push_back(ms);
    total += ms;
    if (times.size() >= 3 && total > 2000.0f) break;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// Device copy rate (bytes read + written per second) of a 1 GiB device-to-device copy: the memory floor.
double copy_rate() {
  static double rate = 0;
  if (rate > 0) return rate;
  const std::size_t n = std::size_t(1) << 30;
  Buffer a(n), b(n);
  const double ms = median_ms(5, [&] { check(cudaMemcpyAsync(b.ptr, a.ptr, n, cudaMemcpyDeviceToDevice), "copy"); });
  rate = 2.0 * n / (ms * 1e-3);
  return rate;
}

// A forward problem on the device: B sequences of T tokens, H heads, K = V, bf16 inputs.
struct DeviceProblem {
  gdr2::cuda::Problem p;
  Buffer q, k, v, g, b, w, o, state, dout, dht, dq, dk, dv, dg, db, dw, dh0;
  DeviceProblem(int B, int T, int H, int K, bool with_backward)
      : q(bytes(B, T, H, K, 2)), k(bytes(B, T, H, K, 2)), v(bytes(B, T, H, K, 2)), g(bytes(B, T, H, K, 4)),
        b(bytes(B, T, H, K, 2)), w(bytes(B, T, H, K, 2)), o(bytes(B, T, H, K, 2)),
        state(std::size_t(B) * H * K * K * 4),
        dout(with_backward ? bytes(B, T, H, K, 2) : 0), dht(with_backward ? std::size_t(B) * H * K * K * 4 : 0),
        dq(with_backward ? bytes(B, T, H, K, 2) : 0), dk(with_backward ? bytes(B, T, H, K, 2) : 0),
        dv(with_backward ? bytes(B, T, H, K, 2) : 0), dg(with_backward ? bytes(B, T, H, K, 4) : 0),
        db(with_backward ? bytes(B, T, H, K, 2) : 0), dw(with_backward ? bytes(B, T, H, K, 2) : 0),
        dh0(with_backward ? std::size_t(B) * H * K * K * 4 : 0) {
    p.B = B; p.T = T; p.H = H; p.HV = H; p.K = K; p.V = K;
    p.dtype = gdr2::cuda::DType::bf16;
    const std::size_t n = std::size_t(B) * T * H * K;
    const float unit = 1.7320508f / std::sqrt(static_cast<float>(K));  // uniform entries, |row| ~ 1
    fill_bf16<<<1024, 256>>>(q.as<__nv_bfloat16>(), n, 1, -unit, unit);
    fill_bf16<<<1024, 256>>>(k.as<__nv_bfloat16>(), n, 2, -unit, unit);
    fill_bf16<<<1024, 256>>>(v.as<__nv_bfloat16>(), n, 3, -1.7f, 1.7f);
    fill_f32<<<1024, 256>>>(g.as<float>(), n, 4, -5.0f, -0.1f);
    fill_bf16<<<1024, 256>>>(b.as<__nv_bfloat16>(), n, 5, 0.0f, 1.0f);
    fill_bf16<<<1024, 256>>>(w.as<__nv_bfloat16>(), n, 6, 0.0f, 1.0f);
    fill_f32<<<1024, 256>>>(state.as<float>(), std::size_t(B) * H * K * K, 7, -1.0f, 1.0f);
    if (with_backward) {
      fill_bf16<<<1024, 256>>>(dout.as<__nv_bfloat16>(), n, 8, -1.0f, 1.0f);
      fill_f32<<<1024, 256>>>(dht.as<float>(), std::size_t(B) * H * K * K, 9, -1.0f, 1.0f);
    }
    check(cudaGetLastError(), "fill kernels");
    check(cudaDeviceSynchronize(), "fill kernels");
  }
  static std::size_t bytes(int B, int T, int H, int K, int e) { return std::size_t(B) * T * H * K * e; }
  // In place: h0 == ht (the timing includes reading and writing the state).
  gdr2::cuda::ForwardTensors forward() const {
    gdr2::cuda::ForwardTensors x;
    x.q = q.ptr; x.k = k.ptr; x.v = v.ptr; x.g = g.as<float>(); x.b = b.ptr; x.w = w.ptr;
    x.h0 = state.as<float>(); x.o = o.ptr; x.ht = state.as<float>();
    return x;
  }
  // Bytes a forward must move: q, k, v, b, w, o (bf16), g (fp32), initial and final state (fp32).
  double forward_bytes() const {
    const double n = double(p.B) * p.T * p.H * p.K;
    return n * (6 * 2 + 4) + 2.0 * p.B * p.H * p.K * p.V * 4;
  }
  std::string shape() const {
    return "B=" + std::to_string(p.B) + " T=" + std::to_string(p.T) + " H=" + std::to_string(p.H) +
           " K=V=" + std::to_string(p.K);
  }
};

gdr2_bench::Row row(const std::string& name, const DeviceProblem& d, const std::string& config, double ms,
                    double bytes, const std::string& note) {
  gdr2_bench::Row r;
  r.benchmark = name;
  r.shape = d.shape();
  r.config = config;
  r.seconds = ms * 1e-3;
  r.tokens_per_second = double(d.p.B) * d.p.T / r.seconds;
  r.gb_per_second = bytes / r.seconds * 1e-9;
  r.floor_fraction = (bytes / copy_rate()) / r.seconds;
  r.note = note;
  return r;
}

struct Shape { int B, T; };
std::vector<Shape> chunk_shapes(const gdr2_bench::Context& ctx) {
  if (ctx.quick) return {{1, 256}};
  return {{4, 4096}, {1, 16384}, {8, 2048}};
}
int repeats(const gdr2_bench::Context& ctx) { return ctx.quick ? 3 : std::max(ctx.repeats, 20); }

}  // namespace

GDR2_BENCHMARK("cuda/chunk_forward", "CUDA chunk forward (fast and accurate modes), bf16 inputs, h0 and ht") {
  if (!gdr2::cuda::device_available()) return;
  for (Shape s : chunk_shapes(ctx)) {
    DeviceProblem d(s.B, s.T, 16, 128, false);
    for (auto mode : {gdr2::cuda::Mode::fast, gdr2::cuda::Mode::accurate}) {
      const double ms = median_ms(repeats(ctx), [&] { gdr2::cuda::chunk_forward(d.p, d.forward(), mode); });
      const char* m = mode == gdr2::cuda::Mode::fast ? "fast" : "accurate";
      ctx.report(row(std::string("cuda/chunk_forward/") + m, d, "bf16", ms, d.forward_bytes(),
                     s.B == 4 ? "target <= 1.19 ms (goal 0.8)" : ""));
    }
  }
}

GDR2_BENCHMARK("cuda/chunk_forward_tiles", "CUDA chunk forward (both modes) at B=4 T=4096 with each state V tile") {
  if (!gdr2::cuda::device_available()) return;
  DeviceProblem d(ctx.quick ? 1 : 4, ctx.quick ? 256 : 4096, 16, 128, false);
  for (auto mode : {gdr2::cuda::Mode::fast, gdr2::cuda::Mode::accurate})
    for (const char* vt : {"16", "32", "64"}) {
      setenv("GDR2_CUDA_STATE_VT", vt, 1);
      const double ms = median_ms(repeats(ctx), [&] { gdr2::cuda::chunk_forward(d.p, d.forward(), mode); });
      ctx.report(row(std::string("cuda/chunk_forward_tiles/") + (mode == gdr2::cuda::Mode::fast ? "fast" : "accurate"), d,
                     std::string("VT=") + vt, ms, d.forward_bytes(), ""));
    }
  unsetenv("GDR2_CUDA_STATE_VT");
  setenv("GDR2_CUDA_STATE_PREFETCH", "0", 1);
  const double ms = median_ms(repeats(ctx), [&] { gdr2::cuda::chunk_forward(d.p, d.forward(), gdr2::cuda::Mode::accurate); });
  ctx.report(row("cuda/chunk_forward_tiles/accurate", d, "no prefetch", ms, d.forward_bytes(), ""));
  unsetenv("GDR2_CUDA_STATE_PREFETCH");
}

GDR2_BENCHMARK("cuda/recurrent_forward", "CUDA token-by-token forward over a whole sequence, bf16 inputs") {
  if (!gdr2::cuda::device_available()) return;
  const Shape s = ctx.quick ? Shape{1, 256} : Shape{4, 4096};
  DeviceProblem d(s.B, s.T, 16, 128, false);
  for (const char* warps : {"8", "4"}) {  // default block shape, and GDR2_CUDA_RECURRENT_WARPS=4
    setenv("GDR2_CUDA_RECURRENT_WARPS", warps, 1);
    const double ms = median_ms(ctx.quick ? 3 : 5, [&] { gdr2::cuda::recurrent_forward(d.p, d.forward()); });
    ctx.report(row("cuda/recurrent_forward", d, std::string("warps=") + warps, ms, d.forward_bytes(), ""));
  }
  unsetenv("GDR2_CUDA_RECURRENT_WARPS");
}

GDR2_BENCHMARK("cuda/decode", "CUDA decode step (T = 1, state updated in place) for 1 and 256 sequences x 16 heads") {
  if (!gdr2::cuda::device_available()) return;
  // Measured side by side: the default choice (the streaming kernel of recurrent_stream.cu with at least one
  // state per SM, else the tiled one), each kernel forced (GDR2_CUDA_RECURRENT_KERNEL), and the tiled kernel
  // with 4 warps (GDR2_CUDA_RECURRENT_WARPS=4).
  struct Config { const char* label; const char* kernel; const char* warps; };
  for (Config c : {Config{"default", nullptr, nullptr}, Config{"kernel=stream", "stream", nullptr},
                   Config{"kernel=tiled warps=8", "tiled", nullptr}, Config{"kernel=tiled warps=4", "tiled", "4"}}) {
    if (c.kernel) setenv("GDR2_CUDA_RECURRENT_KERNEL", c.kernel, 1); else unsetenv("GDR2_CUDA_RECURRENT_KERNEL");
    if (c.warps) setenv("GDR2_CUDA_RECURRENT_WARPS", c.warps, 1); else unsetenv("GDR2_CUDA_RECURRENT_WARPS");
    for (int sequences : {1, 256}) {
      DeviceProblem d(sequences, 1, 16, 128, false);
      const double ms = median_ms(std::max(repeats(ctx), 50), [&] { gdr2::cuda::recurrent_forward(d.p, d.forward()); });
      const double state_bytes = 2.0 * sequences * 16 * 128 * 128 * 4;  // read + write
      auto r = row("cuda/decode", d, c.label, ms, d.forward_bytes(), "");
      r.note = "state traffic " + std::to_string(state_bytes / (ms * 1e-3) * 1e-12).substr(0, 5) + " TB/s" +
               (sequences == 1 ? "; target < 0.05 ms" : "; target >= 2.8 TB/s");
      ctx.report(r);
    }
  }
  unsetenv("GDR2_CUDA_RECURRENT_KERNEL");
  unsetenv("GDR2_CUDA_RECURRENT_WARPS");
}

#ifdef GDR2_CUDA_HAVE_BACKWARD
GDR2_BENCHMARK("cuda/chunk_forward_backward", "CUDA chunk forward + backward (fast with and without a SavedForward, accurate), bf16, h0/ht, dht") {
  if (!gdr2::cuda::device_available()) return;
  for (Shape s : chunk_shapes(ctx)) {
    DeviceProblem d(s.B, s.T, 16, 128, true);
    // fast-saved: the training pair, the forward filling a SavedForward that the tensor-core backward starts
    // from; fast: tensor-core backward recomputing the forward's intermediates; fast-fp32-backward: Mode::fast
    // with GDR2_CUDA_BACKWARD_KERNEL=fp32 (the fp32 program, the comparison in the same run); accurate: fp32
    // forward and backward.
    struct Variant { gdr2::cuda::Mode mode; const char* name; const char* backward_kernel; bool saved; };
    for (const Variant variant : {Variant{gdr2::cuda::Mode::fast, "fast-saved", nullptr, true},
                                  Variant{gdr2::cuda::Mode::fast, "fast", nullptr, false},
                                  Variant{gdr2::cuda::Mode::fast, "fast-fp32-backward", "fp32", false},
                                  Variant{gdr2::cuda::Mode::accurate, "accurate", nullptr, false}}) {
      const gdr2::cuda::Mode mode = variant.mode;
      const char* m = variant.name;
      if (variant.backward_kernel) setenv("GDR2_CUDA_BACKWARD_KERNEL", variant.backward_kernel, 1);
      else unsetenv("GDR2_CUDA_BACKWARD_KERNEL");
      gdr2::cuda::BackwardTensors x;
      x.q = d.q.ptr; x.k = d.k.ptr; x.v = d.v.ptr; x.g = d.g.as<float>(); x.b = d.b.ptr; x.w = d.w.ptr;
      x.h0 = d.state.as<float>(); x.dout = d.dout.ptr; x.dht = d.dht.as<float>();
      x.dq = d.dq.ptr; x.dk = d.dk.ptr; x.dg = d.dg.as<float>(); x.db = d.db.ptr; x.dv = d.dv.ptr; x.dw = d.dw.ptr;
      x.dh0 = d.dh0.as<float>();
      auto f = d.forward();
      Buffer ht(d.state.bytes);
      f.ht = ht.as<float>();  // keep h0 intact (the backward reads it)
      gdr2::cuda::SavedForward saved;
      double ms_bwd = 0;
      try {
        if (variant.saved) {  // the backward alone, from the intermediates of one forward
          gdr2::cuda::chunk_forward(d.p, f, mode, saved);
          ms_bwd = median_ms(repeats(ctx), [&] { gdr2::cuda::chunk_backward(d.p, x, mode, saved); });
        } else {
          ms_bwd = median_ms(repeats(ctx), [&] { gdr2::cuda::chunk_backward(d.p, x, mode); });
        }
      } catch (const std::exception& e) {  // a backward still being written must not hide the forward rows
        gdr2_bench::Row r = row(std::string("cuda/chunk_forward_backward/") + m, d, "bf16", 0, 0, "");
        r.seconds = r.tokens_per_second = r.gb_per_second = r.floor_fraction = 0;
        r.note = std::string("not run: ") + e.what();
        ctx.report(r);
        continue;
      }
      const double ms = median_ms(repeats(ctx), [&] {
        if (variant.saved) {
          gdr2::cuda::chunk_forward(d.p, f, mode, saved);
          gdr2::cuda::chunk_backward(d.p, x, mode, saved);
        } else {
          gdr2::cuda::chunk_forward(d.p, f, mode);
          gdr2::cuda::chunk_backward(d.p, x, mode);
        }
      });
      // Forward bytes + backward: reads q, k, v, b, w, dout (bf16), g, h0, dht; writes 6 grads + dg, dh0.
      const double n = double(s.B) * s.T * 16 * 128;
      const double bytes = d.forward_bytes() + n * (6 * 2 + 4 + 5 * 2 + 4 + 2) + 3.0 * s.B * 16 * 128 * 128 * 4;
      ctx.report(row(std::string("cuda/chunk_forward_backward/") + m, d, "bf16", ms, bytes,
                     "backward alone " + std::to_string(ms_bwd).substr(0, 6) + " ms" +
                         (variant.saved ? "; saved " + std::to_string(saved.device_bytes() >> 20) + " MiB" : "") +
                         (s.B == 4 ? "; target <= 6.8 ms (goal 4.5)" : "")));
    }
    unsetenv("GDR2_CUDA_BACKWARD_KERNEL");
  }
}
#endif
