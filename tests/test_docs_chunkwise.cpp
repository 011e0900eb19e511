// Checks of the chunkwise derivation (derivations/03-chunkwise.md, derivations/05-numerics-and-cost.md) that
// the forward-form tests do not already make: the decay-normalised recurrence, the residual row recurrence,
// the WY product, and the overflow of the naive inverse decay.
//
// Tolerances: cpp_bin_float_50 has unit roundoff u ~ 5e-51. Every identity below is an exact rearrangement of
// rational functions of the inputs and of exp(G) values, evaluated with at most ~ n * d <= 20 * 6 = 120
// operations per entry on values of size <= e^100 relative to the result (gamma^{-1} appears only here, on
// purpose, with G >= -100). A relative difference of 1e-40 is therefore ~ 1e10 above rounding and ~ 1e24 below
// anything double resolves: a wrong formula fails it by tens of orders of magnitude.
#include <cmath>
#include <limits>
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>
#include <boost/multiprecision/cpp_bin_float.hpp>
#include <boost/multiprecision/eigen.hpp>
#include <gdr2/reference.hpp>
#include "problems.hpp"

using gdr2::Index;
using mp50 = boost::multiprecision::cpp_bin_float_50;
using M50 = gdr2::Matrix<mp50>;
using V50 = gdr2::Vector<mp50>;

namespace {

// A random one-chunk problem in cpp_bin_float_50; the sizes are drawn by RapidCheck (seed printed on failure).
gdr2::Head<mp50> draw_chunk() {
  const auto seed = *rc::gen::inRange<std::uint64_t>(0, 1u << 30);
  const Index n = *rc::gen::inRange<Index>(1, 21), dk = *rc::gen::inRange<Index>(1, 7),
              dv = *rc::gen::inRange<Index>(1, 6);
  const auto regime = *rc::gen::element(gdr2_test::Gates::typical, gdr2_test::Gates::weak_decay,
                                        gdr2_test::Gates::negative_eig, gdr2_test::Gates::gate_edges,
                                        gdr2_test::Gates::raw_keys);
  return gdr2_test::random_head(seed, n, dk, dv, regime, true).cast<mp50>();
}

// |a - b| / max(|b|, floor): `floor` is the size of the terms that cancel to make b (so an exact zero reached
// by cancellation, e.g. 1 - b k.k = 0 at a gate edge, is judged against its terms, not against zero).
double relative(const M50& a, const M50& b, const mp50& floor = mp50(0)) {
  mp50 scale = b.norm() > floor ? mp50(b.norm()) : floor;
  if (scale == mp50(0)) scale = mp50(1);
  return gdr2::to_double(mp50((a - b).norm() / scale));
}

V50 row(const M50& m, Index r) { return m.row(r).transpose(); }

}  // namespace

// Eq. 3.1: Shat_r = Gamma_r^{-1} S_r obeys Shat_r = Shat_{r-1} + kbar_r (z_r - ebar_r^T Shat_{r-1})^T.
RC_GTEST_PROP(DocsChunkwise, DecayNormalisedRecurrenceMatchesStates, ()) {
  const auto h = draw_chunk();
  gdr2::ForwardOptions keep;
  keep.keep_states = true;
  const auto f = gdr2::recurrent_forward(h, keep);
  M50 G = M50::Zero(1, h.dk()), shat = h.s0;  // G_0 = 0, Shat_0 = S_0
  mp50 terms = h.s0.norm();                   // the size of the terms summed into Shat_r
  for (Index r = 0; r < h.T(); ++r) {
    G += h.g.row(r);
    const V50 gamma = gdr2::exp_of(row(G, 0)), inv_gamma = gdr2::exp_of(V50(-row(G, 0)));
    const V50 kbar = inv_gamma.cwiseProduct(row(h.k, r));
    const V50 ebar = gamma.cwiseProduct(row(h.b, r)).cwiseProduct(row(h.k, r));
    const V50 z = row(h.w, r).cwiseProduct(row(h.v, r));
    const V50 residual = z - shat.transpose() * ebar;
    shat += kbar * residual.transpose();
    terms += kbar.norm() * residual.norm();
    const M50 expected = inv_gamma.asDiagonal() * f.states[static_cast<size_t>(r + 1)];
    RC_ASSERT(relative(shat, expected, terms) <= 1e-40);
  }
}

// Eq. 3.2 and 3.6: the rows of R are the token residuals z_r - r_r of the recurrent form, and (I + T) R = Z - Ebar S_0.
RC_GTEST_PROP(DocsChunkwise, ResidualsAreTheTokenResiduals, ()) {
  const auto h = draw_chunk();
  gdr2::ForwardOptions keep;
  keep.keep_states = true;
  const auto f = gdr2::recurrent_forward(h, keep);
  const auto c = gdr2::chunk_intermediates(h, 0, h.T(), h.s0);
  M50 token_residuals(h.T(), h.dv());
  for (Index r = 0; r < h.T(); ++r) {
    const M50 sbar = gdr2::exp_of(row(h.g, r)).asDiagonal() * f.states[static_cast<size_t>(r)];
    const V50 e = row(h.b, r).cwiseProduct(row(h.k, r));
    token_residuals.row(r) = (row(h.w, r).cwiseProduct(row(h.v, r)) - sbar.transpose() * e).transpose();
  }
  const mp50 terms = c.Z.norm() + c.Ebar.norm() * h.s0.norm() + c.T.norm() * c.R.norm();
  RC_ASSERT(relative(c.R, token_residuals, terms) <= 1e-40);
  M50 unit_lower = c.T;
  unit_lower.diagonal().setOnes();
  RC_ASSERT(relative(M50(unit_lower * c.R), M50(c.Z - c.Ebar * h.s0), terms) <= 1e-40);
}

// Eq. 3.5 and 3.11: T_rs = ebar_r . kbar_s (formed here with gamma^{-1}, as the derivation writes it), and the
// forward-substitution row recurrences Y_r = Ebar_r - sum_{s<r} T_rs Y_s, U_r = Z_r - sum_{s<r} T_rs U_s
// reproduce the reference's Y and U.
RC_GTEST_PROP(DocsChunkwise, RowRecurrencesReproduceTheWySolve, ()) {
  const auto h = draw_chunk();
  const auto c = gdr2::chunk_intermediates(h, 0, h.T(), h.s0);
  const Index n = h.T();
  M50 T_from_bars = M50::Zero(n, n);
  for (Index r = 0; r < n; ++r)
    for (Index s = 0; s < r; ++s) {
      const V50 ebar = row(c.gamma, r).cwiseProduct(row(h.b, r)).cwiseProduct(row(h.k, r));
      const V50 kbar = gdr2::exp_of(V50(-row(c.G, s))).cwiseProduct(row(h.k, s));
      T_from_bars(r, s) = ebar.dot(kbar);
    }
  RC_ASSERT(relative(c.T, T_from_bars, M50(h.b.cwiseProduct(h.k)).norm() * h.k.norm()) <= 1e-40);
  M50 Y = c.Ebar, U = c.Z;
  for (Index r = 0; r < n; ++r)
    for (Index s = 0; s < r; ++s) {
      Y.row(r) -= c.T(r, s) * Y.row(s);
      U.row(r) -= c.T(r, s) * U.row(s);
    }
  RC_ASSERT(relative(Y, c.Y, c.Ebar.norm() + c.T.norm() * c.Y.norm()) <= 1e-40);
  RC_ASSERT(relative(U, c.U, c.Z.norm() + c.T.norm() * c.U.norm()) <= 1e-40);
}

// Eq. 3.8 (WY representation): (I - kbar_n ebar_n^T) ... (I - kbar_1 ebar_1^T) = I - Kbar^T A Ebar.
RC_GTEST_PROP(DocsChunkwise, WyProductEqualsProductOfFactors, ()) {
  const auto h = draw_chunk();
  const auto c = gdr2::chunk_intermediates(h, 0, h.T(), h.s0);
  const Index n = h.T(), dk = h.dk();
  M50 kbar(n, dk);
  for (Index r = 0; r < n; ++r) kbar.row(r) = gdr2::exp_of(M50(-c.G.row(r))).cwiseProduct(h.k.row(r));
  M50 product = M50::Identity(dk, dk);
  mp50 terms = 1;  // the product of the factors' norms bounds every term that may cancel
  for (Index r = 0; r < n; ++r) {
    const M50 factor = M50::Identity(dk, dk) - row(kbar, r) * row(c.Ebar, r).transpose();
    product = factor * product;
    terms *= factor.norm() + mp50(1);
  }
  const M50 wy = M50::Identity(dk, dk) - kbar.transpose() * c.Y;  // Y = A Ebar
  RC_ASSERT(relative(wy, product, terms) <= 1e-40);
}

// Eq. 5.1: forming gamma^{-1} = exp(-G) overflows once -G exceeds ln(max) (709.78 in double, 88.72 in float);
// the stable form exp(G_r - G_s), r >= s, stays finite and exact. Negative control: the naive T is nan.
TEST(DocsChunkwise, NaiveInverseDecayOverflowsWhereStableFormDoesNot) {
  EXPECT_NEAR(std::log(std::numeric_limits<double>::max()), 709.78, 0.01);
  EXPECT_NEAR(std::log(std::numeric_limits<float>::max()), 88.72, 0.01);
  // 16 tokens with g = -50 in every channel: G_16 = -800 (overflows exp(-G) in double), and g = -6 in float
  // reaches G_16 = -96 (overflows in float).
  for (double g : {-50.0, -6.0}) {
    auto h = gdr2_test::random_head(7, 16, 4, 3, gdr2_test::Gates::typical, true);
    h.g.setConstant(g);
    auto check = [&](auto zero) {
      using S = decltype(zero);
      const auto hs = h.cast<S>();
      const auto c = gdr2::chunk_intermediates(hs, 0, hs.T(), hs.s0);
      // Naive: Ebar (underflows to 0 for large r) times Kbar^T = (exp(-G) * K)^T (overflows to inf).
      gdr2::Matrix<S> kbar = gdr2::exp_of(gdr2::Matrix<S>(-c.G)).cwiseProduct(hs.k);
      gdr2::Matrix<S> naive = c.Ebar * kbar.transpose();
      const bool overflows = !kbar.allFinite();
      const bool naive_nan = !naive.allFinite();
      const bool stable_finite = c.T.allFinite() && c.Aqk.allFinite() && c.R.allFinite();
      return std::tuple{overflows, naive_nan, stable_finite};
    };
    const auto [overflow_d, nan_d, finite_d] = check(0.0);
    const auto [overflow_f, nan_f, finite_f] = check(0.0f);
    EXPECT_TRUE(finite_d) << "g = " << g;
    EXPECT_TRUE(finite_f) << "g = " << g;
    EXPECT_TRUE(overflow_f && nan_f) << "float: exp(-G) with G down to " << 16 * g << " must overflow";
    if (g == -50.0) EXPECT_TRUE(overflow_d && nan_d) << "double: exp(-G) with G down to -800 must overflow";
    else EXPECT_FALSE(overflow_d || nan_d) << "double: G = -96 is still representable";
  }
  // The stable form is also right, not merely finite: T_rs with every g = -50 is b_r k_r . k_s exp(-50 (r - s)).
  auto h = gdr2_test::random_head(8, 16, 4, 3, gdr2_test::Gates::typical, true);
  h.g.setConstant(-50.0);
  const auto c = gdr2::chunk_intermediates(h, 0, h.T(), h.s0);
  for (Index r = 1; r < 16; ++r)
    for (Index s = 0; s < r; ++s) {
      const double expected =
          h.b.row(r).cwiseProduct(h.k.row(r)).dot(h.k.row(s)) * std::exp(-50.0 * static_cast<double>(r - s));
      // Relative error of one dot product of length 4 and one exp: a few ulps; 1e-13 leaves ~500x margin.
      EXPECT_NEAR(c.T(r, s), expected, 1e-13 * std::abs(expected) + 1e-300);
    }
}

// Eq. 5.2: exp(G_r - G_s) from cumulative sums carries an absolute error ~ u (|G_r| + |G_s|) in the exponent.
// In float, sums over the whole sequence (|G| ~ 1e3 .. 1e4) lose digits that chunk-local sums (reset every
// chunk, |G| <= C |g|) keep. Measured against a double evaluation of the same products.
TEST(DocsChunkwise, GlobalCumsumsLoseDigitsThatChunkLocalCumsumsKeep) {
  const int T = 4096, C = 64;
  std::vector<float> g(T);
  gdr2_test::Sampler s(11);
  for (int t = 0; t < T; ++t) g[static_cast<size_t>(t)] = static_cast<float>(s.uniform(-1.0, -0.1));
  float global = 0;
  std::vector<float> G_global(T), G_local(T);
  std::vector<double> G_exact(T);
  double exact = 0;
  for (int t = 0; t < T; ++t) {
    global += g[static_cast<size_t>(t)];
    exact += static_cast<double>(g[static_cast<size_t>(t)]);
    G_global[static_cast<size_t>(t)] = global;
    G_exact[static_cast<size_t>(t)] = exact;
  }
  for (int t = 0; t < T; ++t)
    G_local[static_cast<size_t>(t)] =
        (t % C == 0 ? 0.0f : G_local[static_cast<size_t>(t - 1)]) + g[static_cast<size_t>(t)];
  double worst_global = 0, worst_local = 0;
  for (int c0 = T - C; c0 < T; c0 += C)  // the last chunk: |G_global| ~ 2000
    for (int r = c0; r < c0 + C; ++r)
      for (int q = c0; q <= r; ++q) {
        const double truth = std::exp(G_exact[static_cast<size_t>(r)] - G_exact[static_cast<size_t>(q)]);
        const double from_global =
            std::exp(static_cast<double>(G_global[static_cast<size_t>(r)] - G_global[static_cast<size_t>(q)]));
        const double from_local =
            std::exp(static_cast<double>(G_local[static_cast<size_t>(r)] - G_local[static_cast<size_t>(q)]));
        worst_global = std::max(worst_global, std::abs(from_global - truth) / truth);
        worst_local = std::max(worst_local, std::abs(from_local - truth) / truth);
      }
  // Chunk-local: |G| <= 64, so the exponent error is <= ~ 64 * 64 * 6e-8 / 2 ~ 1e-4 in the worst case and ~1e-5
  // typically; global: |G| ~ 2200 gives errors ~ 2200 * 6e-8 ~ 1e-4 and more. The claim checked: chunk-local
  // sums are at least 10x more accurate, and global sums are worse than 1e-5 (fp32 resolution is lost).
  EXPECT_LT(worst_local * 10, worst_global) << "local " << worst_local << ", global " << worst_global;
  EXPECT_GT(worst_global, 1e-5);
  // The two numbers quoted in derivations/05-numerics-and-cost.md (Eq. 5.2), to their two printed digits.
  EXPECT_NEAR(worst_local, 4.4e-6, 0.05e-6);
  EXPECT_NEAR(worst_global, 9.0e-4, 0.05e-4);
  std::printf("exp(G_r - G_s) in float, last chunk of T = 4096: worst relative error %.2e (chunk-local sums), "
              "%.2e (global sums)\n", worst_local, worst_global);
}
