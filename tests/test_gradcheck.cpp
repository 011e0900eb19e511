// gdr2::gradcheck (finite differences in multiprecision, Richardson-extrapolated) and gdr2::compare_gradients
// (calibrated tolerance for low-precision gradients), with the negative controls they must reject.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <gdr2/backward.hpp>
#include "problems.hpp"
#include "wrong_backwards.hpp"

using gdr2::Index;
using mp50 = boost::multiprecision::cpp_bin_float_50;
using mp100 = boost::multiprecision::cpp_bin_float_100;
using namespace gdr2_test;

namespace {
const auto reference_backward = [](const gdr2::Head<double>& h, const gdr2::Matrix<double>& d, const gdr2::Matrix<double>& s) {
  return gdr2::chunkwise_backward(h, d, s, 4);
};
}  // namespace

// A correct double backward passes at the automatic tolerance, in every gate regime; the report names every
// tensor with its worst index and the step.
TEST(Gradcheck, ReferenceBackwardPassesInEveryRegime) {
  for (const Gates regime : kAllGates) {
    const auto h = random_head(61, 9, 3, 4, regime);
    const auto up = random_upstream(61, 9, 3, 4);
    // cpp_bin_float_50 finite differences (~1e-43 accurate) are ample for a double backward, and 5x faster.
    const auto report = gdr2::gradcheck<mp50>(h, up.dout, up.ds_final, reference_backward);
    EXPECT_TRUE(report.passed) << name(regime) << "\n" << report.to_string();
    ASSERT_EQ(report.tensors.size(), 7u);
    EXPECT_EQ(report.tensors[2].name, "dg");
    EXPECT_GT(report.step, 0.0);
    for (const auto& t : report.tensors) {
      EXPECT_GE(t.row, 0) << t.name;
      // double backward vs ~1e-43-accurate finite differences: the error is the backward's own rounding.
      EXPECT_LE(t.max_error, 1e-13) << name(regime) << " " << t.name;
    }
  }
}

// Multiprecision agreement: the reference backward in cpp_bin_float_100 against finite differences in
// cpp_bin_float_100. With 4 Richardson levels the truncation error is O(h^8) with h = eps^(1/9) ~ 1e-11, and
// the rounding error O(eps / h) ~ 1e-89; we assert 1e-60 (measured on this case: 3.2e-87, printed by the test).
TEST(Gradcheck, MultiprecisionAgreementBeyond1e60) {
  const auto h = random_head(67, 7, 3, 2, Gates::negative_eig);
  const auto up = random_upstream(67, 7, 3, 2);
  gdr2::GradcheckOptions options;
  options.tolerance = 1e-60;
  const auto report = gdr2::gradcheck<mp100>(
      h, up.dout, up.ds_final,
      [](const gdr2::Head<double>& x, const gdr2::Matrix<double>& d, const gdr2::Matrix<double>& s) {
        return gdr2::chunkwise_backward(x.cast<mp100>(), gdr2::cast_matrix<mp100>(d), gdr2::cast_matrix<mp100>(s), 3);
      },
      options);
  std::printf("%s", report.to_string().c_str());
  RecordProperty("max_error", std::to_string(report.max_error));
  EXPECT_TRUE(report.passed) << report.to_string();
  EXPECT_LE(report.max_error, 1e-60);
}

TEST(Gradcheck, NegativeControlsAreRejected) {
  const auto h = random_head(71, 11, 4, 3);
  const auto up = random_upstream(71, 11, 4, 3);
  using Backward = gdr2::Gradients<double> (*)(const gdr2::Head<double>&, const gdr2::Matrix<double>&,
                                               const gdr2::Matrix<double>&, Index);
  const std::pair<const char*, Backward> wrong[] = {
      {"scalar post-scale", &wrong_backward_scalar_postscale<double>},
      {"no last-chunk decay", &wrong_backward_no_last_chunk_decay<double>},
      {"no ds0", &wrong_backward_no_ds0<double>},
  };
  for (const auto& [what, backward] : wrong) {
    const auto report = gdr2::gradcheck<mp50>(h, up.dout, up.ds_final, [backward](const auto& x, const auto& d, const auto& s) {
      return backward(x, d, s, 4);
    });
    EXPECT_FALSE(report.passed) << what << " was accepted:\n" << report.to_string();
    EXPECT_GT(report.max_error, 1e-3) << what;
  }
}

// compare_gradients: a float backward (the reference evaluated in float) passes the float contract at a ratio
// near 1; the scalar post-scale bug evaluated in float is rejected; bfloat16 gradients fail the float contract.
TEST(CompareGradients, CalibratedAgainstTheContractPrecision) {
  const auto h = random_head(73, 80, 16, 16);
  const auto up = random_upstream(73, 80, 16, 16);
  const auto hf = h.cast<float>();
  const auto doutf = gdr2::cast_matrix<float>(up.dout), dsff = gdr2::cast_matrix<float>(up.ds_final);
  const auto good = gdr2::recurrent_backward(hf, doutf, dsff);  // another algorithm in the same precision
  const auto verdict = gdr2::compare_gradients<float>(h, up.dout, up.ds_final, good);
  EXPECT_TRUE(verdict.passed) << verdict.to_string();
  const auto bad = wrong_backward_scalar_postscale(hf, doutf, dsff, 64);
  EXPECT_FALSE(gdr2::compare_gradients<float>(h, up.dout, up.ds_final, bad).passed);
  const auto coarse = gdr2::chunkwise_backward(h.cast<Eigen::bfloat16>(), gdr2::cast_matrix<Eigen::bfloat16>(up.dout),
                                               gdr2::cast_matrix<Eigen::bfloat16>(up.ds_final));
  EXPECT_FALSE(gdr2::compare_gradients<float>(h, up.dout, up.ds_final, coarse).passed);
  EXPECT_TRUE(gdr2::compare_gradients<Eigen::bfloat16>(h, up.dout, up.ds_final, coarse).passed);
}

TEST(Gradcheck, WrongShapeFromTheCheckedBackwardIsAnError) {
  const auto h = random_head(79, 4, 2, 2);
  const auto up = random_upstream(79, 4, 2, 2);
  try {
    (void)gdr2::gradcheck(h, up.dout, up.ds_final, [](const auto& x, const auto& d, const auto& s) {
      auto g = gdr2::recurrent_backward(x, d, s);
      g.dw.resize(3, 2);
      return g;
    });
    FAIL() << "wrong shape accepted";
  } catch (const gdr2::invalid_argument& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("returned 'dw' of shape 3 x 2, expected 4 x 2"));
  }
}
