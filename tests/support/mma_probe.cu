// Device side of mma_probe.hpp: one warp runs the helpers of cuda/src/mma_sync.cuh on operands in padded shared
// memory (row strides that are not the tile width, as in the kernels).
#include "mma_probe.hpp"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "mma_sync.cuh"

namespace gdr2_test::cuda {
namespace {
using namespace gdr2::cuda::detail::tc;
using bf16 = __nv_bfloat16;

constexpr int kWide = 32 + 8;  // row stride of a 32-column operand (bf16 elements; 80-byte rows)
constexpr int kNarrow = 16 + 8;  // row stride of a 16-column operand (48-byte rows)

// a_rows x a_cols and b_rows x b_cols operands, row-major in global memory, copied to padded shared tiles.
__global__ void probe_kernel(int form, bool misread_b, const float* a, int a_rows, int a_cols, const float* b,
                             int b_rows, int b_cols, const float* factor, float* c, float* c_bf16, float* c_scaled) {
  __shared__ __align__(16) bf16 sa[32 * kWide];
  __shared__ __align__(16) bf16 sb[32 * kWide];
  __shared__ __align__(16) bf16 sc[16 * kNarrow];
  const int lane = threadIdx.x, lda = a_cols == 32 ? kWide : kNarrow, ldb = b_cols == 32 ? kWide : kNarrow;
  for (int i = lane; i < a_rows * a_cols; i += 32) sa[(i / a_cols) * lda + i % a_cols] = __float2bfloat16_rn(a[i]);
  for (int i = lane; i < b_rows * b_cols; i += 32) sb[(i / b_cols) * ldb + i % b_cols] = __float2bfloat16_rn(b[i]);
  __syncwarp();
  Acc16 acc;
  acc.zero();
  if (form == 0) {  // A B
    if (misread_b) mma_k_blocks<load_a, load_b_transposed>(acc, sa, lda, 16, sb, ldb, 16 * ldb, 2, lane);
    else mma_ab(acc, sa, lda, sb, ldb, 2, lane);
  } else if (form == 1) {  // A Bt^T
    if (misread_b) mma_k_blocks<load_a, load_b>(acc, sa, lda, 16, sb, ldb, 16, 2, lane);
    else mma_abt(acc, sa, lda, sb, ldb, 2, lane);
  } else {  // At^T B
    if (misread_b) mma_k_blocks<load_a_transposed, load_b_transposed>(acc, sa, lda, 16 * lda, sb, ldb, 16 * ldb, 2, lane);
    else mma_atb(acc, sa, lda, sb, ldb, 2, lane);
  }
  acc.store(c, 16, lane);
  acc.store_bf16(sc, kNarrow, lane);
  __syncwarp();
  for (int i = lane; i < 256; i += 32) c_bf16[i] = __bfloat162float(sc[(i / 16) * kNarrow + i % 16]);
  acc.scale_rows(factor, lane);
  acc.store(c_scaled, 16, lane);
}

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string("mma probe: ") + what + ": " + cudaGetErrorString(status));
}

}  // namespace

MmaProbeResult run_mma_probe(MmaForm form, const std::vector<float>& a, const std::vector<float>& b,
                             const std::vector<float>& factor, bool misread_b) {
  const int a_rows = form == MmaForm::atb ? 32 : 16, a_cols = 48 - a_rows;
  const int b_rows = form == MmaForm::abt ? 16 : 32, b_cols = 48 - b_rows;
  if (a.size() != 512u || b.size() != 512u || factor.size() != 16u)
    throw std::invalid_argument("mma probe: a and b need 512 elements, factor 16");
  float* device = nullptr;  // a | b | factor | c | c_bf16 | c_scaled
  check(cudaMalloc(&device, (512 + 512 + 16 + 3 * 256) * sizeof(float)), "cudaMalloc");
  float *da = device, *db = da + 512, *df = db + 512, *dc = df + 16, *dcb = dc + 256, *dcs = dcb + 256;
  MmaProbeResult out{std::vector<float>(256), std::vector<float>(256), std::vector<float>(256)};
  try {
    check(cudaMemcpy(da, a.data(), 512 * sizeof(float), cudaMemcpyHostToDevice), "copy a");
    check(cudaMemcpy(db, b.data(), 512 * sizeof(float), cudaMemcpyHostToDevice), "copy b");
    check(cudaMemcpy(df, factor.data(), 16 * sizeof(float), cudaMemcpyHostToDevice), "copy factor");
    probe_kernel<<<1, 32>>>(static_cast<int>(form), misread_b, da, a_rows, a_cols, db, b_rows, b_cols, df, dc, dcb, dcs);
    check(cudaGetLastError(), "launch");
    check(cudaMemcpy(out.c.data(), dc, 256 * sizeof(float), cudaMemcpyDeviceToHost), "copy c");
    check(cudaMemcpy(out.c_bf16.data(), dcb, 256 * sizeof(float), cudaMemcpyDeviceToHost), "copy c_bf16");
    check(cudaMemcpy(out.c_scaled.data(), dcs, 256 * sizeof(float), cudaMemcpyDeviceToHost), "copy c_scaled");
  } catch (...) {
    cudaFree(device);
    throw;
  }
  cudaFree(device);
  return out;
}

}  // namespace gdr2_test::cuda
