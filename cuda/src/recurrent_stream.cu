// Streaming recurrent forward for decode-shaped calls (spec section 2, Eq. 8-10): a decode step reads and
// writes the whole state (2 K V 4 bytes per value head) for O(K V) flops, so its speed is the memory
// system's, and the kernel's job is to keep enough bytes in flight.
//
// Work split: a persistent grid (as many blocks as fit) walks the items (sequence n, value head hv, part p of
// 64 state columns); the block copies an item's K x 64 slice of the state into shared memory with cp.async
// (16-byte pieces) kStages - 1 items ahead of the one it computes, so the loads of the next items overlap the
// arithmetic and the stores of the current one. At K = 128 a block holds three 32 KB slices and two blocks
// fit an SM: 128 KB of loads in flight per SM at all times, and while one block computes or stores, the
// other waits on its loads (the tiled kernel of recurrent.cu has at most four 16 KB tiles in flight per SM,
// and none between a tile's last store and the next block's first load).
// The arithmetic is the tiled kernel's (recurrent_step.cuh): lane l holds columns 2l, 2l + 1 of the part,
// warp j rows [j KR, (j + 1) KR) of them in registers, r_t and o_t are summed per warp in row order and over
// warps in warp order through shared memory. So for the same K the two kernels agree bit for bit, and
// recurrent_forward may pick either by the call's shape (this one for at most one token per sequence).
#include <cuda_pipeline.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <utility>

#include <string>

#include "recurrent_step.cuh"
#include "recurrent_stream.cuh"

namespace gdr2::cuda::detail {
namespace {

using recurrent::kWarps;
constexpr int kThreads = kWarps * 32;
constexpr int kStages = 3;       // state buffers per block: the item computed and kStages - 1 in flight
constexpr int kLaneColumns = 2;  // columns per lane (one 8-byte vector)
constexpr int kPartColumns = 32 * kLaneColumns;  // columns of one item: a state is split in ceil(V / 64) parts
constexpr int kMaxK = 256;

// Shared memory (floats): kStages state parts [K x 64], the key-side vectors alpha, e, k, q [K each], and
// the warps' partial sums of r_t and o_t [kWarps x 64 each]. Every part starts 16-byte aligned.
std::size_t stream_shared_bytes(int K) {
  return (static_cast<std::size_t>(kStages) * K * kPartColumns + 4 * static_cast<std::size_t>(K) +
          2 * kWarps * kPartColumns) * sizeof(float);
}

// Two blocks per SM (K <= 128: three 32 KB slices each), one at K = 256.
template <class T, int KR>
__global__ void __launch_bounds__(kThreads, KR <= 16 ? 2 : 1)
recurrent_stream_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                        const float* __restrict__ g, const T* __restrict__ b, const T* __restrict__ w,
                        const float* h0, T* __restrict__ o, float* ht, const std::int32_t* __restrict__ cu_seqlens,
                        int T_, int H, int HV, int K, int V, float scale, int items) {
  extern __shared__ __align__(16) float smem[];
  const int part_floats = K * kPartColumns;
  float* s_parts = smem;                               // kStages x [K x 64]
  float* s_alpha = smem + kStages * part_floats;       // exp(g_t)        [K]
  float* s_erase = s_alpha + K;                        // e_t = b_t * k_t [K]
  float* s_key = s_erase + K;                          // k_t             [K]
  float* s_query = s_key + K;                          // q_t             [K]
  float* s_read = s_query + K;                         // partial r_t     [kWarps x 64]
  float* s_out = s_read + kWarps * kPartColumns;       // partial o_t     [kWarps x 64]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int parts = (V + kPartColumns - 1) / kPartColumns;
  const int lc = lane * kLaneColumns;  // this lane's columns in the part: lc, lc + 1

  // Copies columns [p0, p0 + 64) of item's state into buffer `slot` (16-byte pieces; V % 4 == 0, so a piece
  // lies inside V or outside it); nothing without h0 or past the last item. One commit group per call, so
  // that group i always belongs to the i-th item of this block.
  auto prefetch = [&](int item, int slot) {
    if (item < items && h0 != nullptr) {
      const int p0 = (item % parts) * kPartColumns;
      const float* src = h0 + static_cast<std::size_t>(item / parts) * K * V + p0;
      float* dst = s_parts + slot * part_floats;
      for (int i = tid; i < K * (kPartColumns / 4); i += kThreads) {
        const int d = i / (kPartColumns / 4), j = 4 * (i % (kPartColumns / 4));
        if (p0 + j < V) __pipeline_memcpy_async(dst + d * kPartColumns + j, src + static_cast<std::size_t>(d) * V + j, 16);
      }
    }
    __pipeline_commit();
  };

  const int stride = gridDim.x;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) prefetch(blockIdx.x + s * stride, s);

  for (int it = 0, item = blockIdx.x; item < items; ++it, item += stride) {
    const int state = item / parts, p0 = (item % parts) * kPartColumns;
    const int n = state / HV, hv = state % HV, h = hv / (HV / H);
    const bool columns_ok = p0 + lc < V;  // V % 4 == 0: both columns or none
    const SeqRange seq = sequence_range(cu_seqlens, n, T_);
    // The token's inputs go to registers first: their latency overlaps the wait for the state.
    float in_q = 0.f, in_k = 0.f, in_g = 0.f, in_b = 0.f, in_v[kLaneColumns], in_w[kLaneColumns];
    auto load_token = [&](std::int64_t t) {
      if (tid < K) {
        const std::size_t key_at = (static_cast<std::size_t>(t) * H + h) * K + tid;
        in_q = to_float(q[key_at]);
        in_k = to_float(k[key_at]);
        in_g = g[key_at];
        in_b = to_float(b[key_at]);
      }
      if (columns_ok) {
        const std::size_t value_at = (static_cast<std::size_t>(t) * HV + hv) * V + p0 + lc;
#pragma unroll
        for (int m = 0; m < kLaneColumns; ++m) {
          in_v[m] = to_float(v[value_at + m]);
          in_w[m] = to_float(w[value_at + m]);
        }
      }
    };
    if (seq.bos < seq.eos) load_token(seq.bos);

    __pipeline_wait_prior(kStages - 2);  // this item's copy group has landed (for this thread) ...
    __syncthreads();                     // ... and for every thread
    float st[KR][kLaneColumns];          // S[warp KR + i][p0 + lc + m]
    const float* S = s_parts + (it % kStages) * part_floats;
#pragma unroll
    for (int i = 0; i < KR; ++i) {
      const int d = warp * KR + i;
      float2 row = make_float2(0.f, 0.f);
      if (h0 != nullptr && columns_ok && d < K) row = *reinterpret_cast<const float2*>(S + d * kPartColumns + lc);
      st[i][0] = row.x;
      st[i][1] = row.y;
    }
    // The buffer refilled now was last read in the previous iteration, before the barrier above.
    prefetch(item + (kStages - 1) * stride, (it + kStages - 1) % kStages);

    for (std::int64_t t = seq.bos; t < seq.eos; ++t) {
      if (tid < K) {
        s_alpha[tid] = recurrent::decay_of(in_g);        // alpha_t = exp(g_t)
        s_erase[tid] = recurrent::erase_of(in_b, in_k);  // e_t = b_t * k_t
        s_key[tid] = in_k;
        s_query[tid] = in_q;
      }
      float written[kLaneColumns];  // z_t = w_t * v_t
#pragma unroll
      for (int m = 0; m < kLaneColumns; ++m) written[m] = columns_ok ? recurrent::write_of(in_w[m], in_v[m]) : 0.f;
      const std::size_t value_at = (static_cast<std::size_t>(t) * HV + hv) * V + p0 + lc;
      __syncthreads();
      if (t + 1 < seq.eos) load_token(t + 1);
      float partial[kLaneColumns] = {0.f, 0.f};
#pragma unroll
      for (int i = 0; i < KR; ++i) {
        const int d = warp * KR + i;
        if (d < K) {
          const float alpha = s_alpha[d], erase = s_erase[d];
#pragma unroll
          for (int m = 0; m < kLaneColumns; ++m) recurrent::decay_and_read(st[i][m], alpha, erase, partial[m]);  // Eq. 8-9
        }
      }
      if (columns_ok) *reinterpret_cast<float2*>(s_read + warp * kPartColumns + lc) = make_float2(partial[0], partial[1]);
      __syncthreads();
      float delta[kLaneColumns];  // z_t - r_t
#pragma unroll
      for (int m = 0; m < kLaneColumns; ++m) {
        delta[m] = columns_ok ? recurrent::delta_of<kWarps>(written[m], s_read + lc + m, kPartColumns) : 0.f;
        partial[m] = 0.f;
      }
#pragma unroll
      for (int i = 0; i < KR; ++i) {
        const int d = warp * KR + i;
        if (d < K) {
          const float key = s_key[d], query = s_query[d];
#pragma unroll
          for (int m = 0; m < kLaneColumns; ++m) recurrent::edit_and_query(st[i][m], key, delta[m], query, partial[m]);  // Eq. 10, o_t
        }
      }
      if (columns_ok) *reinterpret_cast<float2*>(s_out + warp * kPartColumns + lc) = make_float2(partial[0], partial[1]);
      __syncthreads();
      if (warp == 0 && columns_ok) {
#pragma unroll
        for (int m = 0; m < kLaneColumns; ++m)
          o[value_at + m] = from_float<T>(recurrent::output_of<kWarps>(scale, s_out + lc + m, kPartColumns));
      }
    }
    if (ht != nullptr && columns_ok) {
      float* dst = ht + (static_cast<std::size_t>(state) * K + warp * KR) * V + p0 + lc;  // row warp KR
#pragma unroll
      for (int i = 0; i < KR; ++i, dst += V)
        if (warp * KR + i < K) *reinterpret_cast<float2*>(dst) = make_float2(st[i][0], st[i][1]);
    }
  }
  __pipeline_wait_prior(0);  // no copy outlives the block (the groups left are empty or past the last item)
}

// Blocks of recurrent_stream_kernel<T, KR> that fit on one SM with `shared` bytes of dynamic shared memory, on
// the current device. The attribute and occupancy queries run once per (device, shared size), not per call:
// a decode step is short, and the host calls would otherwise sit between the caller's events. The kernel's
// dynamic shared-memory limit only ever grows (to the largest size asked for on the device), so a call with
// a smaller K never lowers it below what an earlier, larger one still needs.
template <class T, int KR>
int blocks_per_sm(int device, std::size_t shared, const char* who) {
  static std::mutex mutex;
  static std::map<std::pair<int, std::size_t>, int> known;  // (device, shared) -> blocks per SM
  static std::map<int, std::size_t> limit;                  // device -> the attribute's value
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_pair(device, shared);
  if (const auto it = known.find(key); it != known.end()) return it->second;
  const auto kernel = recurrent_stream_kernel<T, KR>;
  if (shared > limit[device]) {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)), who,
          "cudaFuncSetAttribute(recurrent_stream_kernel, max dynamic shared memory)");
    limit[device] = shared;
  }
  int per_sm = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, shared), who,
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor(recurrent_stream_kernel)");
  if (per_sm < 1) fail(who, ": recurrent_stream_kernel does not fit on an SM with ", shared, " bytes of shared memory");
  return known[key] = per_sm;
}

template <class T, int KR>
void launch_kr(const Problem& p, const ForwardTensors& x, int N, float scale, cudaStream_t stream) {
  const char* who = "gdr2::cuda::recurrent_forward";
  const std::size_t shared = stream_shared_bytes(p.K);
  int device = 0, sms = 0;
  check(cudaGetDevice(&device), who, "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), who, "cudaDeviceGetAttribute(SM count)");
  const int items = N * p.HV * ((p.V + kPartColumns - 1) / kPartColumns);
  const int grid = std::min(items, blocks_per_sm<T, KR>(device, shared, who) * sms);
  if (grid == 0) return;
  recurrent_stream_kernel<T, KR><<<grid, kThreads, shared, stream>>>(
      static_cast<const T*>(x.q), static_cast<const T*>(x.k), static_cast<const T*>(x.v), x.g,
      static_cast<const T*>(x.b), static_cast<const T*>(x.w), x.h0, static_cast<T*>(x.o), x.ht, p.cu_seqlens, p.T,
      p.H, p.HV, p.K, p.V, scale, items);
  check_launch(who, "recurrent_stream_kernel");
}

}  // namespace

std::string recurrent_stream_unsupported(const Problem& p, const ForwardTensors& x) {
  std::ostringstream why;
  if (p.K > kMaxK) why << "K <= " << kMaxK << " (got " << p.K << "); ";
  if (p.V % 4 != 0) why << "V a multiple of 4 (got " << p.V << "); ";
  if (reinterpret_cast<std::uintptr_t>(x.h0) % 16 != 0) why << "h0 16-byte aligned; ";
  if (reinterpret_cast<std::uintptr_t>(x.ht) % 16 != 0) why << "ht 16-byte aligned; ";
  int device = 0, max_shared = 0;
  check(cudaGetDevice(&device), "gdr2::cuda::recurrent_forward", "cudaGetDevice");
  check(cudaDeviceGetAttribute(&max_shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
        "gdr2::cuda::recurrent_forward", "cudaDeviceGetAttribute(max shared memory per block)");
  if (stream_shared_bytes(p.K) > static_cast<std::size_t>(max_shared))
    why << stream_shared_bytes(p.K) << " bytes of shared memory per block (" << kStages << " state parts of K x "
        << kPartColumns << " floats; this device allows " << max_shared << "); ";
  std::string s = why.str();
  if (!s.empty()) s.resize(s.size() - 2);
  return s;
}

void launch_recurrent_stream(const Problem& p, const ForwardTensors& x, int N, float scale, cudaStream_t stream) {
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    switch (recurrent::rows_per_warp(p.K, kWarps)) {
      case 4: launch_kr<T, 4>(p, x, N, scale, stream); break;
      case 8: launch_kr<T, 8>(p, x, N, scale, stream); break;
      case 16: launch_kr<T, 16>(p, x, N, scale, stream); break;
      default: launch_kr<T, 32>(p, x, N, scale, stream); break;
    }
  });
}

}  // namespace gdr2::cuda::detail
