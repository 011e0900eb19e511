// The tensor-core products of the CUDA kernels (cuda/src/mma_sync.cuh: mma.sync with ldmatrix operands, fragment
// layouts as the PTX ISA defines them) checked one warp at a time against a double product of the same bf16
// inputs, with a negative control: B read in the wrong layout must be rejected. Without a CUDA device every test
// reports "skipped: no CUDA device".
#include <gtest/gtest.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include <gdr2/cuda.hpp>

#include "mma_probe.hpp"

namespace {

using gdr2_test::cuda::MmaForm;

#define GDR2_REQUIRE_DEVICE() \
  if (!gdr2::cuda::device_available()) GTEST_SKIP() << "skipped: no CUDA device"

float to_bf16(float x) { return static_cast<float>(Eigen::bfloat16(x)); }

struct Operands {
  std::vector<float> a, b, factor;  // a, b already bf16 values (the probe's rounding is then exact)
};

Operands random_operands(unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f), f(0.0f, 1.0f);
  Operands x{std::vector<float>(512), std::vector<float>(512), std::vector<float>(16)};
  for (auto& e : x.a) e = to_bf16(u(rng));
  for (auto& e : x.b) e = to_bf16(u(rng));
  for (auto& e : x.factor) e = f(rng);
  return x;
}

// Element (m, k) of op(A) and (k, n) of op(B) for each form, from the operands as stored (row-major).
float op_a(MmaForm form, const std::vector<float>& a, int m, int k) { return form == MmaForm::atb ? a[k * 16 + m] : a[m * 32 + k]; }
float op_b(MmaForm form, const std::vector<float>& b, int k, int n) { return form == MmaForm::abt ? b[n * 32 + k] : b[k * 16 + n]; }

// Worst ratio |C - C_ref| / bound over the 256 elements. C_ref in double from the same bf16 inputs; the products of
// two bf16 numbers are exact in fp32, so the only error is the fp32 accumulation of k = 32 terms: |error| <= gamma_32
// sum_k |a b| with gamma_32 ~ 32 u (u = 2^-24). The bound allows 4x that, since tensor cores align the addends of
// their fp32 sums with truncation rather than round to nearest; a wrong fragment layout errs by O(1).
double worst_ratio(MmaForm form, const Operands& x, const std::vector<float>& c) {
  double worst = 0.0;
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      double exact = 0.0, magnitude = 0.0;
      for (int k = 0; k < 32; ++k) {
        const double t = double(op_a(form, x.a, m, k)) * op_b(form, x.b, k, n);
        exact += t;
        magnitude += std::abs(t);
      }
      const double bound = 4.0 * 32.0 * std::ldexp(1.0, -24) * magnitude + 1e-30;
      worst = std::max(worst, std::abs(c[m * 16 + n] - exact) / bound);
    }
  return worst;
}

class CudaMma : public testing::TestWithParam<MmaForm> {};

TEST_P(CudaMma, ProductMatchesDoubleWithinTheAccumulationBound) {
  GDR2_REQUIRE_DEVICE();
  for (unsigned seed = 1; seed <= 4; ++seed) {
    const Operands x = random_operands(seed);
    const auto r = gdr2_test::cuda::run_mma_probe(GetParam(), x.a, x.b, x.factor);
    EXPECT_LE(worst_ratio(GetParam(), x, r.c), 1.0) << "seed " << seed;
    for (int i = 0; i < 256; ++i) {
      EXPECT_EQ(r.c_bf16[i], to_bf16(r.c[i])) << "store_bf16 rounds each element once; element " << i;
      EXPECT_EQ(r.c_scaled[i], r.c[i] * x.factor[i / 16]) << "scale_rows multiplies row " << i / 16;
    }
  }
}

TEST_P(CudaMma, NegativeControlMisreadOperandIsRejected) {
  GDR2_REQUIRE_DEVICE();
  const Operands x = random_operands(9);
  const auto r = gdr2_test::cuda::run_mma_probe(GetParam(), x.a, x.b, x.factor, /*misread_b=*/true);
  EXPECT_GT(worst_ratio(GetParam(), x, r.c), 1.0) << "B read in the wrong layout must fail the bound";
}

// (The prefix starts with Cuda: gpu-check runs ctest -R '^Cuda'.)
INSTANTIATE_TEST_SUITE_P(CudaMmaForms, CudaMma, testing::Values(MmaForm::ab, MmaForm::abt, MmaForm::atb),
                         [](const testing::TestParamInfo<MmaForm>& info) {
                           return std::string(info.param == MmaForm::ab ? "AB" : info.param == MmaForm::abt ? "ABt" : "AtB");
                         });

}  // namespace
