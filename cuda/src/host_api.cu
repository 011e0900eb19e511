// Host side shared by all kernels: device discovery and the argument checks of the public API.
#include <cmath>
#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

#include "common.cuh"

namespace gdr2::cuda {

bool device_available() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

std::string device_name() {
  cudaDeviceProp prop{};
  if (!device_available() || cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return "no CUDA device";
  return prop.name;
}

namespace detail {
namespace {
std::mutex pool_mutex;
std::map<int, cudaMemPool_t> pools;  // device -> its workspace pool (kept for the life of the process)

// The current device's pool, created on first use when `create`; without `create`, nullptr when there is none yet
// (or no device).
cudaMemPool_t find_or_create_pool(const char* who, bool create) {
  int device = 0;
  if (create) check(cudaGetDevice(&device), who, "cudaGetDevice");
  else if (cudaGetDevice(&device) != cudaSuccess) return nullptr;
  const std::lock_guard<std::mutex> lock(pool_mutex);
  if (const auto found = pools.find(device); found != pools.end()) return found->second;
  if (!create) return nullptr;
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = device;
  cudaMemPool_t pool = nullptr;
  check(cudaMemPoolCreate(&pool, &props), who, "cudaMemPoolCreate(workspace pool)");
  std::uint64_t keep_all = UINT64_MAX;
  const cudaError_t status = cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_all);
  if (status != cudaSuccess) {
    cudaMemPoolDestroy(pool);
    check(status, who, "cudaMemPoolSetAttribute(workspace pool, release threshold)");
  }
  pools.emplace(device, pool);
  return pool;
}
}  // namespace

cudaMemPool_t workspace_pool(const char* who) { return find_or_create_pool(who, true); }

void require_pointer(const void* ptr, const char* who, const char* name) {
  if (ptr == nullptr) fail(who, ": tensor '", name, "' is a null pointer (required)");
}

void require_alignment(const void* ptr, std::size_t bytes, const char* who, const char* name) {
  if (ptr != nullptr && reinterpret_cast<std::uintptr_t>(ptr) % bytes != 0)
    fail(who, ": tensor '", name, "' at address ", ptr, " is not aligned to ", bytes, " bytes");
}

void validate_forward_tensors(const Problem& p, const ForwardTensors& x, int N, const char* who) {
  const std::size_t e = dtype_size(p.dtype);
  if (p.T > 0) {
    require_pointer(x.q, who, "q");
    require_pointer(x.k, who, "k");
    require_pointer(x.v, who, "v");
    require_pointer(x.g, who, "g");
    require_pointer(x.b, who, "b");
    require_pointer(x.w, who, "w");
    require_pointer(x.o, who, "o");
  }
  require_alignment(x.q, e, who, "q");
  require_alignment(x.k, e, who, "k");
  require_alignment(x.v, e, who, "v");
  require_alignment(x.b, e, who, "b");
  require_alignment(x.w, e, who, "w");
  require_alignment(x.o, e, who, "o");
  require_alignment(x.g, 4, who, "g");
  require_alignment(x.h0, 4, who, "h0");
  require_alignment(x.ht, 4, who, "ht");
  if (x.h0 != nullptr && x.ht != nullptr && x.h0 != x.ht) {
    const std::size_t bytes = static_cast<std::size_t>(N) * p.HV * p.K * p.V * sizeof(float);
    const char* a = reinterpret_cast<const char*>(x.h0);
    const char* z = reinterpret_cast<const char*>(x.ht);
    if (a < z + bytes && z < a + bytes) fail(who, ": h0 and ht overlap partially (they must be equal or disjoint)");
  }
}

Validated validate_problem(const Problem& p, const char* who) {
  auto positive = [&](const char* name, int value) {
    if (value < 1) fail(who, ": ", name, " must be >= 1, got ", value);
  };
  positive("B", p.B);
  positive("H", p.H);
  positive("HV", p.HV);
  positive("K", p.K);
  positive("V", p.V);
  if (p.T < 0) fail(who, ": T must be >= 0, got ", p.T);
  if (p.HV % p.H != 0)
    fail(who, ": HV (", p.HV, ") must be a multiple of H (", p.H, "): value head hv reads key head hv / (HV / H)");
  if (!std::isfinite(p.scale) || p.scale < 0)
    fail(who, ": scale must be finite and >= 0 (0 means 1/sqrt(K)), got ", p.scale);
  if (p.dtype != DType::f32 && p.dtype != DType::bf16 && p.dtype != DType::f16)
    fail(who, ": unknown dtype ", static_cast<int>(p.dtype));
  Validated out;
  out.scale = p.scale == 0.0f ? 1.0f / std::sqrt(static_cast<float>(p.K)) : p.scale;
  if (p.cu_seqlens == nullptr) {
    if (p.num_seqs != 0 && p.num_seqs != p.B)
      fail(who, ": num_seqs (", p.num_seqs, ") is given without cu_seqlens and differs from B (", p.B, ")");
    out.N = p.B;
    return out;
  }
  if (p.B != 1) fail(who, ": packed variable-length input (cu_seqlens given) needs B == 1, got B = ", p.B);
  if (p.num_seqs < 1) fail(who, ": cu_seqlens is given, so num_seqs must be >= 1, got ", p.num_seqs);
  require_alignment(p.cu_seqlens, 4, who, "cu_seqlens");
  std::vector<std::int32_t> offsets(static_cast<std::size_t>(p.num_seqs) + 1);
  cudaPointerAttributes attributes{};
  check(cudaPointerGetAttributes(&attributes, p.cu_seqlens), who, "cudaPointerGetAttributes(cu_seqlens)");
  if (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged)
    fail(who, ": cu_seqlens must be a device pointer (got host or unregistered memory)");
  check(cudaMemcpy(offsets.data(), p.cu_seqlens, offsets.size() * sizeof(std::int32_t), cudaMemcpyDeviceToHost),
        who, "cudaMemcpy(cu_seqlens -> host) for validation");
  if (offsets.front() != 0) fail(who, ": cu_seqlens[0] must be 0, got ", offsets.front());
  for (int n = 0; n < p.num_seqs; ++n)
    if (offsets[n + 1] < offsets[n])
      fail(who, ": cu_seqlens must be non-decreasing, but cu_seqlens[", n + 1, "] = ", offsets[n + 1],
           " < cu_seqlens[", n, "] = ", offsets[n]);
  if (offsets.back() != p.T)
    fail(who, ": cu_seqlens[num_seqs] = ", offsets.back(), " must equal T = ", p.T);
  out.N = p.num_seqs;
  return out;
}

}  // namespace detail

std::size_t workspace_pool_bytes() {
  cudaMemPool_t pool = detail::find_or_create_pool("gdr2::cuda::workspace_pool_bytes", false);
  if (pool == nullptr) return 0;
  std::uint64_t bytes = 0;
  detail::check(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &bytes),
                "gdr2::cuda::workspace_pool_bytes", "cudaMemPoolGetAttribute(reserved memory)");
  return static_cast<std::size_t>(bytes);
}

void trim_workspace_pool() {
  cudaMemPool_t pool = detail::find_or_create_pool("gdr2::cuda::trim_workspace_pool", false);
  if (pool != nullptr)
    detail::check(cudaMemPoolTrimTo(pool, 0), "gdr2::cuda::trim_workspace_pool", "cudaMemPoolTrimTo(0)");
}

}  // namespace gdr2::cuda
