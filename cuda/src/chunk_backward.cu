// Gate-aware chunkwise backward of the Gated Delta Rule-2 (spec section 6), chunk C = 64, fp32 FFMA.
//
// Four kernels (the phases of chunk_backward_program.cuh), all in fp32 with exact elementwise decays
// exp(G_r - G_s), r >= s (any decay, g = -50 per token included):
//   A prepare_kernel      per (chunk, value head), all chunks in parallel: G, T, Aqk, A = (I + T)^{-1}, Y, U,
//                         Ktail, Qgamma, gamma_last; stores Y, U, Ktail, Qgamma, Aqk, gamma_last ("prep").
//   B states_kernel<fwd>  per (sequence, value head, 32-column value tile), chunks in order: the chunk-start
//                         states S_c (Eq. 25), the only sequential part of the forward.
//   C states_kernel<bwd>  same items, chunks in reverse: dR = Aqk^T dO + Ktail dS and
//                         dS_c = Diag(gamma_last) dS + Qgamma^T dO - Y^T dR, storing the gradient of every
//                         chunk-end state (and dh0).
//   D gradients_kernel    per (chunk, value head), in parallel: recomputes the chunk from S_c, takes dS from C,
//                         and applies the rest of section 6 for dq, dk, dg, db, dv, dw. dq, dk, db, dg of a GVA
//                         group are summed over its value heads with fp32 atomics.
//
// Memory trade-off (what is stored vs recomputed), fp32 workspace allocated stream-ordered per call:
//   stored      S_c and dS_c: 2 x 4 K V bytes per (chunk, value head) (B=4, T=4096, HV=16, K=V=128: 2 x 256 MiB);
//               prep: 4 (3 C K + C V + C C + K) bytes per (chunk, value head) (~150 KiB; 600 MiB at that shape).
//               Keeping S_c and dS_c makes the sequential phases short (two state products per chunk) and
//               lets phase D run every chunk in parallel; storing per-token states would cost 64x more.
//   recomputed  in phase D, the chunk's forward intermediates (G, T, Aqk, A, Y, U, R) and dR, from the inputs
//               and S_c (O(C^2 (K + V) + C K V) flops per chunk), held in per-worker scratch (~0.9 MiB at
//               K = V = 128; the grid has at most 2 x #SMs workers, so ~240 MiB on an H100).
//               The prep store could be dropped by recomputing it in B and C too, at 2x their work.
//   accumulators  dq, dk, db in fp32 [B*T, H, K] (the outputs themselves when dtype is f32); dg is fp32.
//
// Modes: `accurate` runs this fp32 FFMA program, and so does `fast` on fp32 inputs or other shapes; `fast` on
// bf16 / f16 inputs with 16 <= K <= 128, V <= 128 runs the tensor-core backward (chunk_backward_tc.cu: the same
// four phases on bf16 tensor-core operands, judged by gdr2-verify's bf16 contract).
// GDR2_CUDA_BACKWARD_KERNEL=fp32|tc forces one.
//
// The same block program runs on the host (chunk_backward_host_emulation, f32 only), which lets the
// backward's mathematics be tested without a GPU; the GPU tests compare the device against the same oracle.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "chunk_backward_emulation.cuh"
#include "chunk_backward_tc.cuh"
#include "chunk_backward_program.cuh"
#include "common.cuh"
#include "saved_forward.cuh"

namespace gdr2::cuda {
namespace {
using namespace detail;

constexpr int kThreads = 256;

std::size_t scratch_stride(int K, int V) {  // per-worker scratch, rounded to 64 floats (keeps doubles aligned)
  return (bwd::scratch_floats(K, V) + 63) / 64 * 64;
}

// Stream-ordered fp32 workspace (from the workspace pool, common.cuh).
class Workspace {
 public:
  Workspace(std::size_t floats, cudaStream_t stream, const char* who) : buffer_(floats * sizeof(float), stream, who) {}
  float* get() const { return buffer_.as<float>(); }

 private:
  StreamBuffer buffer_;
};

// One kernel per phase (chunk_backward_program.cuh); each worker block loops over its items.
template <class T>
__global__ void __launch_bounds__(kThreads) prepare_kernel(bwd::Args<T> a, std::size_t stride, std::int64_t items) {
  a.scratch += blockIdx.x * stride;
  for (std::int64_t item = blockIdx.x; item < items; item += gridDim.x)
    bwd::prepare_chunk(bwd::BlockTeam{}, a, item / a.HV, static_cast<int>(item % a.HV));
}

template <class T>
__global__ void __launch_bounds__(kThreads) gradients_kernel(bwd::Args<T> a, std::size_t stride, std::int64_t items) {
  a.scratch += blockIdx.x * stride;
  for (std::int64_t item = blockIdx.x; item < items; item += gridDim.x)
    bwd::chunk_gradients(bwd::BlockTeam{}, a, item / a.HV, static_cast<int>(item % a.HV));
}

// Items (sequence, value head, value tile) of the sequential state phases; the tile and the chunk's
// operands live in dynamic shared memory (bwd::state_local_floats(K, tile) floats).
template <class T, bool Forward>
__global__ void __launch_bounds__(kThreads) states_kernel(bwd::Args<T> a, int tile) {
  extern __shared__ float local[];
  const int tiles = (a.V + tile - 1) / tile;
  const int items = a.N * a.HV * tiles;
  for (int item = blockIdx.x; item < items; item += gridDim.x) {
    const int t = item % tiles, hv = (item / tiles) % a.HV, n = item / (tiles * a.HV);
    const int j0 = t * tile, j1 = min(a.V, j0 + tile);
    if (Forward) bwd::forward_states(bwd::BlockTeam{}, a, n, hv, j0, j1, local);
    else bwd::backward_states(bwd::BlockTeam{}, a, n, hv, j0, j1, local);
  }
}

template <class T>
__global__ void store_kernel(const float* __restrict__ src, T* __restrict__ dst, std::size_t count) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < count;
       i += std::size_t(gridDim.x) * blockDim.x)
    bwd::store(dst + i, src[i]);
}

// Converts fp32 gradient accumulators to the output dtype (bf16 / f16).
void store_gradients(DType dtype, std::initializer_list<std::pair<const float*, void*>> outs, std::size_t count,
                     cudaStream_t stream, const char* who) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int blocks = static_cast<int>(std::min<std::size_t>((count + 255) / 256, 4096));
    for (const auto& [src, dst] : outs) {
      store_kernel<T><<<blocks, 256, 0, stream>>>(src, static_cast<T*>(dst), count);
      check_launch(who, "store_kernel (fp32 gradient -> dtype)");
    }
  });
}

// First chunk of each sequence in the chunk-start state store: prefix sums of ceil(len_n / 64).
std::vector<std::int64_t> chunk_offsets(const Problem& p, int N, const char* who) {
  std::vector<std::int64_t> offsets(static_cast<std::size_t>(N) + 1, 0);
  std::vector<std::int32_t> cu(static_cast<std::size_t>(N) + 1);
  if (p.cu_seqlens) {
    check(cudaMemcpy(cu.data(), p.cu_seqlens, cu.size() * sizeof(std::int32_t), cudaMemcpyDeviceToHost), who,
          "cudaMemcpy(cu_seqlens -> host)");
  } else {
    for (int n = 0; n <= N; ++n) cu[n] = n * p.T;
  }
  for (int n = 0; n < N; ++n)
    offsets[n + 1] = offsets[n] + (cu[n + 1] - cu[n] + bwd::kChunk - 1) / bwd::kChunk;
  return offsets;
}

void validate_backward_tensors(const Problem& p, const BackwardTensors& x, const char* who) {
  const std::size_t e = dtype_size(p.dtype);
  if (p.T > 0) {
    const std::pair<const void*, const char*> required[] = {
        {x.q, "q"},   {x.k, "k"},   {x.v, "v"},   {x.g, "g"},   {x.b, "b"},   {x.w, "w"},   {x.dout, "dout"},
        {x.dq, "dq"}, {x.dk, "dk"}, {x.dg, "dg"}, {x.db, "db"}, {x.dv, "dv"}, {x.dw, "dw"}};
    for (const auto& [ptr, name] : required) require_pointer(ptr, who, name);
  }
  const std::pair<const void*, const char*> typed[] = {{x.q, "q"},       {x.k, "k"},   {x.v, "v"},   {x.b, "b"},
                                                       {x.w, "w"},       {x.dout, "dout"}, {x.dq, "dq"}, {x.dk, "dk"},
                                                       {x.db, "db"},     {x.dv, "dv"}, {x.dw, "dw"}};
  for (const auto& [ptr, name] : typed) require_alignment(ptr, e, who, name);
  const std::pair<const void*, const char*> fp32[] = {{x.g, "g"}, {x.h0, "h0"}, {x.dht, "dht"}, {x.dg, "dg"},
                                                      {x.dh0, "dh0"}};
  for (const auto& [ptr, name] : fp32) require_alignment(ptr, 4, who, name);
}

}  // namespace

namespace {

// chunk_backward, starting after phase B when `saved` holds a matching forward's intermediates.
void backward(const Problem& p, const BackwardTensors& x, Mode mode, const SavedForward* saved, cudaStream_t stream) {
  const char* who = "gdr2::cuda::chunk_backward";
  const Validated checked = validate_problem(p, who);
  if (mode != Mode::fast && mode != Mode::accurate) fail(who, ": unknown mode ", static_cast<int>(mode));
  if (p.K > 256) fail(who, ": K must be <= 256, got K = ", p.K);
  if (p.V > 256) fail(who, ": V must be <= 256, got V = ", p.V);
  validate_backward_tensors(p, x, who);
  const int N = checked.N;
  const std::size_t state_bytes = static_cast<std::size_t>(N) * p.HV * p.K * p.V * sizeof(float);
  const std::int64_t tokens = static_cast<std::int64_t>(p.B) * p.T;
  if (tokens == 0) {  // no tokens: dh0 = dht (or zeros)
    if (x.dh0) {
      if (x.dht) check(cudaMemcpyAsync(x.dh0, x.dht, state_bytes, cudaMemcpyDeviceToDevice, stream), who, "cudaMemcpyAsync(dht -> dh0)");
      else check(cudaMemsetAsync(x.dh0, 0, state_bytes, stream), who, "cudaMemsetAsync(dh0)");
    }
    return;
  }
  // Mode::fast on bf16 / f16 inputs with 16 <= K <= 128, V <= 128 runs on tensor cores (chunk_backward_tc.cu).
  // GDR2_CUDA_BACKWARD_KERNEL=fp32|tc forces one (the benchmark compares them in the same run).
  bool tensor_core = mode == Mode::fast && tensor_core_backward_eligible(p);
  if (const char* forced = std::getenv("GDR2_CUDA_BACKWARD_KERNEL")) {
    const std::string f = forced;
    if (f != "fp32" && f != "tc") fail(who, ": GDR2_CUDA_BACKWARD_KERNEL must be fp32 or tc, got '", f, "'");
    if (f == "tc" && !tensor_core_backward_eligible(p))
      fail(who, ": GDR2_CUDA_BACKWARD_KERNEL=tc needs bf16 or f16 inputs with 16 <= K <= 128 and V <= 128 and an "
           "sm_90-class device (got ", dtype_name(p.dtype), ", K = ", p.K, ", V = ", p.V, ")");
    tensor_core = f == "tc";
  }
  // A filled SavedForward is checked against this call whichever kernel runs; the fp32 program recomputes.
  SavedParts parts;
  const SavedParts* from_forward =
      saved ? SavedForwardAccess::parts_for_backward(*saved, p, N, x, mode, parts, who) : nullptr;
  const std::size_t key_count = static_cast<std::size_t>(tokens) * p.H * p.K;
  if (tensor_core && p.HV == p.H) {  // every gradient element is written once: no accumulators
    tensor_core_backward(p, x, N, checked.scale, nullptr, nullptr, nullptr, from_forward, stream, who);
    return;
  }
  if (tensor_core) {
    // fp32 accumulators for dq, dk, db (summed over the value heads of a group), then stored in dtype.
    Workspace acc(3 * key_count, stream, who);
    float* dq = acc.get();
    float* dk = dq + key_count;
    float* db = dk + key_count;
    for (float* z : {dq, dk, db, x.dg})
      check(cudaMemsetAsync(z, 0, key_count * sizeof(float), stream), who, "cudaMemsetAsync(gradient accumulator)");
    tensor_core_backward(p, x, N, checked.scale, dq, dk, db, from_forward, stream, who);
    store_gradients(p.dtype, {{dq, x.dq}, {dk, x.dk}, {db, x.db}}, key_count, stream, who);
    return;
  }
  const std::vector<std::int64_t> offsets = chunk_offsets(p, N, who);
  int sms = 132, device = 0;
  check(cudaGetDevice(&device), who, "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), who, "cudaDeviceGetAttribute(SM count)");
  const std::int64_t chunk_items = offsets.back() * p.HV;
  // Value tile of the state phases: 32 columns, or 16 when that leaves most SMs idle (their items are the
  // only parallelism of the sequential part).
  const int tile = std::min(p.V, N * p.HV * ((p.V + bwd::kStateTile - 1) / bwd::kStateTile) >= sms ? bwd::kStateTile : 16);
  const int state_items = N * p.HV * ((p.V + tile - 1) / tile);
  // Chunk phases: up to 4 workers per SM (latency hiding), each with its own global scratch.
  const int workers = static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(chunk_items, 4 * sms)));
  const std::size_t stride = scratch_stride(p.K, p.V);
  const std::size_t states = static_cast<std::size_t>(offsets.back()) * p.HV * p.K * p.V;
  const std::size_t prep = static_cast<std::size_t>(chunk_items) * bwd::prep_floats(p.K, p.V);
  const bool f32 = p.dtype == DType::f32;
  // Workspace: [chunk offsets (int64, padded to 64 floats)] [scratch per worker] [S_c] [dS_c] [prep]
  // [dq dk db fp32 accumulators unless dtype is f32].
  const std::size_t offset_floats = (2 * offsets.size() + 63) / 64 * 64;
  Workspace ws(offset_floats + workers * stride + 2 * states + prep + (f32 ? 0 : 3 * key_count), stream, who);
  auto* offsets_dev = reinterpret_cast<std::int64_t*>(ws.get());
  // cudaMemcpyAsync from pageable host memory returns once the source is staged: `offsets` may go.
  check(cudaMemcpyAsync(offsets_dev, offsets.data(), offsets.size() * sizeof(std::int64_t), cudaMemcpyHostToDevice,
                        stream),
        who, "cudaMemcpyAsync(chunk offsets)");
  float* scratch = ws.get() + offset_floats;
  float* state_store = scratch + workers * stride;
  float* dstate_store = state_store + states;
  float* prep_store = dstate_store + states;
  float* acc = prep_store + prep;
  float* dq = f32 ? static_cast<float*>(x.dq) : acc;
  float* dk = f32 ? static_cast<float*>(x.dk) : acc + key_count;
  float* db = f32 ? static_cast<float*>(x.db) : acc + 2 * key_count;
  for (float* z : {dq, dk, db, x.dg})
    check(cudaMemsetAsync(z, 0, key_count * sizeof(float), stream), who, "cudaMemsetAsync(gradient accumulator)");
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    bwd::Args<T> a{};
    a.q = static_cast<const T*>(x.q); a.k = static_cast<const T*>(x.k); a.v = static_cast<const T*>(x.v);
    a.b = static_cast<const T*>(x.b); a.w = static_cast<const T*>(x.w); a.dout = static_cast<const T*>(x.dout);
    a.g = x.g; a.h0 = x.h0; a.dht = x.dht;
    a.dq = dq; a.dk = dk; a.db = db; a.dg = x.dg;
    a.dv = static_cast<T*>(x.dv); a.dw = static_cast<T*>(x.dw); a.dh0 = x.dh0;
    a.cu_seqlens = p.cu_seqlens; a.chunk_offset = offsets_dev;
    a.T_len = p.T; a.H = p.H; a.HV = p.HV; a.K = p.K; a.V = p.V; a.N = N; a.scale = checked.scale;
    a.states = state_store; a.dstates = dstate_store; a.prep = prep_store; a.scratch = scratch;
    const int chunk_workers = workers;
    const int state_workers = std::min(state_items, 8 * sms);
    const std::size_t local_bytes = bwd::state_local_floats(p.K, tile) * sizeof(float);
    int max_shared = 0;
    check(cudaDeviceGetAttribute(&max_shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), who,
          "cudaDeviceGetAttribute(max shared memory per block)");
    if (local_bytes > static_cast<std::size_t>(max_shared))
      fail(who, ": K = ", p.K, " needs ", local_bytes, " bytes of shared memory per block in the state phases; this "
           "device allows ", max_shared, " (K <= 128 is supported on sm_80 and sm_90)");
    check(cudaFuncSetAttribute(states_kernel<T, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(local_bytes)),
          who, "cudaFuncSetAttribute(states_kernel<forward>, max dynamic shared memory)");
    check(cudaFuncSetAttribute(states_kernel<T, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(local_bytes)),
          who, "cudaFuncSetAttribute(states_kernel<backward>, max dynamic shared memory)");
    if (chunk_items > 0) {
      prepare_kernel<T><<<chunk_workers, kThreads, 0, stream>>>(a, stride, chunk_items);
      check_launch(who, "prepare_kernel (phase A)");
    }
    states_kernel<T, true><<<state_workers, kThreads, local_bytes, stream>>>(a, tile);
    check_launch(who, "states_kernel<forward> (phase B)");
    states_kernel<T, false><<<state_workers, kThreads, local_bytes, stream>>>(a, tile);
    check_launch(who, "states_kernel<backward> (phase C)");
    if (chunk_items > 0) {
      gradients_kernel<T><<<chunk_workers, kThreads, 0, stream>>>(a, stride, chunk_items);
      check_launch(who, "gradients_kernel (phase D)");
    }
  });
  if (!f32) store_gradients(p.dtype, {{dq, x.dq}, {dk, x.dk}, {db, x.db}}, key_count, stream, who);
}

}  // namespace

void chunk_backward(const Problem& p, const BackwardTensors& x, Mode mode, cudaStream_t stream) {
  backward(p, x, mode, nullptr, stream);
}

void chunk_backward(const Problem& p, const BackwardTensors& x, Mode mode, const SavedForward& saved,
                    cudaStream_t stream) {
  backward(p, x, mode, &saved, stream);
}

namespace detail {

void chunk_backward_host_emulation(const Problem& p, const BackwardTensors& x, const std::int32_t* cu_seqlens) {
  const char* who = "gdr2::cuda::detail::chunk_backward_host_emulation";
  if (p.dtype != DType::f32) fail(who, ": only dtype f32 is emulated");
  if (p.B < 1 || p.T < 0 || p.H < 1 || p.HV < 1 || p.K < 1 || p.V < 1 || p.HV % p.H != 0)
    fail(who, ": invalid shape");
  const int N = cu_seqlens ? p.num_seqs : p.B;
  const float scale = p.scale == 0.0f ? 1.0f / std::sqrt(static_cast<float>(p.K)) : p.scale;
  std::vector<std::int64_t> offsets(static_cast<std::size_t>(N) + 1, 0);
  for (int n = 0; n < N; ++n) {
    const std::int64_t len = cu_seqlens ? cu_seqlens[n + 1] - cu_seqlens[n] : p.T;
    offsets[n + 1] = offsets[n] + (len + bwd::kChunk - 1) / bwd::kChunk;
  }
  const std::size_t key_count = static_cast<std::size_t>(p.B) * p.T * p.H * p.K;
  const std::size_t state_count = static_cast<std::size_t>(offsets.back()) * p.HV * p.K * p.V;
  std::vector<float> states(state_count), dstates(state_count),
      prep(static_cast<std::size_t>(offsets.back()) * p.HV * bwd::prep_floats(p.K, p.V));
  std::vector<double> scratch((scratch_stride(p.K, p.V) + 1) / 2);  // doubles: 8-byte aligned
  bwd::Args<float> a{};
  a.q = static_cast<const float*>(x.q); a.k = static_cast<const float*>(x.k); a.v = static_cast<const float*>(x.v);
  a.b = static_cast<const float*>(x.b); a.w = static_cast<const float*>(x.w);
  a.dout = static_cast<const float*>(x.dout);
  a.g = x.g; a.h0 = x.h0; a.dht = x.dht;
  a.dq = static_cast<float*>(x.dq); a.dk = static_cast<float*>(x.dk); a.db = static_cast<float*>(x.db); a.dg = x.dg;
  a.dv = static_cast<float*>(x.dv); a.dw = static_cast<float*>(x.dw); a.dh0 = x.dh0;
  a.cu_seqlens = cu_seqlens; a.chunk_offset = offsets.data();
  a.T_len = p.T; a.H = p.H; a.HV = p.HV; a.K = p.K; a.V = p.V; a.N = N; a.scale = scale;
  a.states = states.data(); a.dstates = dstates.data(); a.prep = prep.data();
  a.scratch = reinterpret_cast<float*>(scratch.data());
  for (float* z : {a.dq, a.dk, a.db, a.dg})
    if (key_count) std::fill(z, z + key_count, 0.0f);
  const bwd::SerialTeam team;
  const std::int64_t chunk_items = offsets.back() * p.HV;
  const int tile = std::min(p.V, bwd::kStateTile);  // any tile gives the same arithmetic per column
  std::vector<float> local(bwd::state_local_floats(p.K, tile));
  for (std::int64_t item = 0; item < chunk_items; ++item) bwd::prepare_chunk(team, a, item / p.HV, static_cast<int>(item % p.HV));
  for (int n = 0; n < N; ++n)
    for (int hv = 0; hv < p.HV; ++hv)
      for (int j0 = 0; j0 < p.V; j0 += tile) bwd::forward_states(team, a, n, hv, j0, std::min(p.V, j0 + tile), local.data());
  for (int n = 0; n < N; ++n)
    for (int hv = 0; hv < p.HV; ++hv)
      for (int j0 = 0; j0 < p.V; j0 += tile) bwd::backward_states(team, a, n, hv, j0, std::min(p.V, j0 + tile), local.data());
  for (std::int64_t item = 0; item < chunk_items; ++item) bwd::chunk_gradients(team, a, item / p.HV, static_cast<int>(item % p.HV));
}

}  // namespace detail
}  // namespace gdr2::cuda
