// Checks of derivations/02-family.md that the family tests do not make: the Mamba-2-style member (scalar decay,
// no erase) and the spectrum of the erase transition I - k e^T.
#include <cmath>
#include <gtest/gtest.h>
#include <Eigen/Eigenvalues>
#include <gdr2/reference.hpp>
#include "problems.hpp"

using gdr2::Index;
using Mat = gdr2::Matrix<double>;
using Vec = gdr2::Vector<double>;

// Eq. 2.5: Mamba-2-style scalar-decay linear attention, S_t = exp(a_t) S_{t-1} + k_t v_t^T, is GDR-2 with
// g_t = a_t 1, b_t = 0, w_t = 1. Left: that recurrence written out here; right: gdr2::recurrent_forward.
// Tolerance: the two evaluate the same sums in the same order except the decay (a scalar times a matrix vs a
// diagonal matrix times a matrix, identical products), so they agree to rounding: 1e-14 relative (T = 40 steps of
// ~ d = 8 terms, u = 1.1e-16) with a wide margin; a wrong collapse (e.g. w = 0 or b = 1) differs at O(1).
TEST(DocsFamily, Mamba2StyleIsScalarDecayWithoutErase) {
  const Index T = 40, dk = 8, dv = 5;
  auto h = gdr2_test::random_head(31, T, dk, dv, gdr2_test::Gates::typical, true);
  gdr2_test::Sampler s(32);
  Vec a(T);
  for (Index t = 0; t < T; ++t) a(t) = s.uniform(-1.0, 0.0);
  for (Index t = 0; t < T; ++t) h.g.row(t).setConstant(a(t));
  h.b.setZero();
  h.w.setOnes();
  Mat state = h.s0, o(T, dv);
  for (Index t = 0; t < T; ++t) {
    state = std::exp(a(t)) * state + h.k.row(t).transpose() * h.v.row(t);
    o.row(t) = h.scale * (state.transpose() * h.q.row(t).transpose()).transpose();
  }
  const auto f = gdr2::recurrent_forward(h);
  EXPECT_LE((f.o - o).norm() / o.norm(), 1e-14);
  EXPECT_LE((f.s - state).norm() / state.norm(), 1e-14);
  // Negative control: the same inputs with the erase gate left on are a different model.
  h.b.setOnes();
  EXPECT_GT((gdr2::recurrent_forward(h).o - o).norm() / o.norm(), 1e-2);
}

// Eq. 2.7: I - k e^T (e = b * k) fixes every u with e^T u = 0 and maps k to (1 - e^T k) k, so its eigenvalues are
// 1 (d_k - 1 times) and 1 - e^T k = 1 - sum_i b_i k_i^2, which for a unit key lies in [1 - max b, 1 - min b].
TEST(DocsFamily, EraseTransitionEigenvalues) {
  for (auto regime : {gdr2_test::Gates::typical, gdr2_test::Gates::negative_eig, gdr2_test::Gates::gate_edges})
    for (std::uint64_t seed = 0; seed < 20; ++seed) {
      const auto h = gdr2_test::random_head(40 + seed, 1, 6, 1, regime, false);
      const Vec k = h.k.row(0).transpose(), b = h.b.row(0).transpose(), e = b.cwiseProduct(k);
      const Mat M = Mat::Identity(6, 6) - k * e.transpose();
      const double lambda = 1.0 - e.dot(k);
      EXPECT_LE((M * k - lambda * k).norm(), 1e-14);
      EXPECT_GE(lambda, 1.0 - b.maxCoeff() - 1e-14);
      EXPECT_LE(lambda, 1.0 - b.minCoeff() + 1e-14);
      Eigen::EigenSolver<Eigen::MatrixXd> solver(M);
      int ones = 0, special = 0;
      for (Index i = 0; i < 6; ++i) {
        const auto mu = solver.eigenvalues()(i);
        EXPECT_LE(std::abs(mu.imag()), 1e-8);
        if (std::abs(mu.real() - 1.0) <= 1e-8) ++ones;
        else if (std::abs(mu.real() - lambda) <= 1e-8) ++special;
      }
      // lambda may itself be 1 (e^T k = 0, e.g. b = 0): then all six are ones.
      EXPECT_EQ(ones + special, 6);
      EXPECT_GE(ones, 5);
    }
}

// Eq. 2.8: with channel-wise gates the transition is not symmetric, and its norm can exceed 1 although every
// eigenvalue lies in [0, 1]: k = (1, 1)/sqrt(2), b = (1, 0) gives I - k e^T = [[1/2, 0], [-1/2, 1]], whose
// largest singular value is sqrt((3 + sqrt 5) / 4) = 1.1441. Tied gates (b = beta 1) give a symmetric matrix of
// norm max(1, |1 - beta|) <= 1.
TEST(DocsFamily, ChannelWiseEraseCanAmplifyOneStep) {
  Vec k(2), b(2);
  k << 1 / std::sqrt(2.0), 1 / std::sqrt(2.0);
  b << 1, 0;
  const Mat M = Mat::Identity(2, 2) - k * b.cwiseProduct(k).transpose();
  Mat expected(2, 2);
  expected << 0.5, 0, -0.5, 1;
  EXPECT_LE((M - expected).norm(), 1e-15);
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(M);
  EXPECT_NEAR(svd.singularValues()(0), std::sqrt((3 + std::sqrt(5.0)) / 4), 1e-14);
  EXPECT_GT(svd.singularValues()(0), 1.14);
  const Mat tied = Mat::Identity(2, 2) - 0.7 * k * k.transpose();
  Eigen::JacobiSVD<Eigen::MatrixXd> tied_svd(tied);
  EXPECT_NEAR(tied_svd.singularValues()(0), 1.0, 1e-14);
}
