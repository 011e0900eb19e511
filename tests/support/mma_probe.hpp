#pragma once
// Host entry to a one-warp probe of cuda/src/mma_sync.cuh (the tensor-core kernels' products): the three
// product forms over two k blocks, the accumulator's fp32 and bf16 stores and its row scaling, on the device.
// Used by tests/test_cuda_mma.cpp; needs a CUDA device.
#include <vector>

namespace gdr2_test::cuda {

enum class MmaForm { ab, abt, atb };  // C = A B, A Bt^T, At^T B (C 16 x 16, k = 32)

struct MmaProbeResult {
  std::vector<float> c;         // C through Acc16::store, 16 x 16 row-major
  std::vector<float> c_bf16;    // C through Acc16::store_bf16, widened back to float
  std::vector<float> c_scaled;  // row r of C times factor[r] (Acc16::scale_rows), then Acc16::store
};

// a, b: the operands as stored, row-major (ab: A 16 x 32, B 32 x 16; abt: A 16 x 32, Bt 16 x 32; atb: At 32 x 16,
// B 32 x 16); rounded to bf16 on the way in. factor: 16 row factors. misread_b: load B with the other layout (a
// deliberately wrong product, the negative control).
MmaProbeResult run_mma_probe(MmaForm form, const std::vector<float>& a, const std::vector<float>& b,
                             const std::vector<float>& factor, bool misread_b = false);

}  // namespace gdr2_test::cuda
