// Checks of the backward derivations (derivations/02-family.md, 04-backward.md, 05-numerics-and-cost.md):
// the token-by-token VJP written out from the equations, against forward-mode automatic differentiation of the
// reference forward; the tied-gate gradient (paper Eq. 48); the scalar post-scaling counterexample; the
// adjoint of one step; the FLOP and byte counts the derivation quotes.
//
// Tolerances: forward-mode AD (Eigen::AutoDiffScalar<VectorXd>) propagates exact derivatives of the double
// forward, so AD and the hand-written VJP differ only by the rounding of two different evaluation orders of the
// same sums: relative ~ (T * d) * 1.1e-16 ~ 1e-14 for the sizes here. 1e-11 leaves a 1000x margin, while any wrong
// term in a VJP equation changes the gradient at relative O(1).
#include <cmath>
#include <cstdint>
#include <gtest/gtest.h>
#include <gdr2/reference.hpp>
#include <gdr2/autodiff.hpp>  // after an Eigen header: unsupported/Eigen/AutoDiff does not include Eigen/Core itself
#include "problems.hpp"

using gdr2::Index;
using Mat = gdr2::Matrix<double>;
using Vec = gdr2::Vector<double>;
using AD = Eigen::AutoDiffScalar<Eigen::VectorXd>;

namespace {

double relative(const Mat& a, const Mat& b) {
  const double scale = b.norm() > 0 ? b.norm() : 1.0;
  return (a - b).norm() / scale;
}

// Every input of a head in one flat list of AD variables, in the order q, k, g, b, v, w, s0.
struct Seeded {
  gdr2::Head<AD> head;
  Index count = 0;
};

Seeded seed_all(const gdr2::Head<double>& h) {
  Seeded s;
  s.head = h.cast<AD>();
  const Index total = 4 * h.T() * h.dk() + 2 * h.T() * h.dv() + h.dk() * h.dv();
  auto seed = [&](gdr2::Matrix<AD>& m) {
    for (Index i = 0; i < m.rows(); ++i)
      for (Index j = 0; j < m.cols(); ++j) m(i, j).derivatives() = Eigen::VectorXd::Unit(total, s.count++);
  };
  seed(s.head.q); seed(s.head.k); seed(s.head.g); seed(s.head.b); seed(s.head.v); seed(s.head.w); seed(s.head.s0);
  s.head.scale.derivatives() = Eigen::VectorXd::Zero(total);
  return s;
}

struct Grads {
  Mat dq, dk, dg, db, dv, dw, ds0;
};

// Unpacks the gradient vector of a scalar loss in the order of seed_all.
Grads unpack(const Eigen::VectorXd& d, const gdr2::Head<double>& h) {
  Grads g;
  Index at = 0;
  auto take = [&](Mat& m, Index rows, Index cols) {
    m.resize(rows, cols);
    for (Index i = 0; i < rows; ++i)
      for (Index j = 0; j < cols; ++j) m(i, j) = d(at++);
  };
  take(g.dq, h.T(), h.dk()); take(g.dk, h.T(), h.dk()); take(g.dg, h.T(), h.dk()); take(g.db, h.T(), h.dk());
  take(g.dv, h.T(), h.dv()); take(g.dw, h.T(), h.dv()); take(g.ds0, h.dk(), h.dv());
  return g;
}

// L = <dO, O> + <dS_T, S_T> through gdr2::recurrent_forward in forward-mode AD.
Grads autodiff_gradients(const gdr2::Head<double>& h, const Mat& dout, const Mat& dstate) {
  Seeded s = seed_all(h);
  const auto f = gdr2::recurrent_forward(s.head);
  AD loss(0.0, Eigen::VectorXd::Zero(s.count));
  for (Index i = 0; i < f.o.rows(); ++i)
    for (Index j = 0; j < f.o.cols(); ++j) loss += dout(i, j) * f.o(i, j);
  for (Index i = 0; i < f.s.rows(); ++i)
    for (Index j = 0; j < f.s.cols(); ++j) loss += dstate(i, j) * f.s(i, j);
  return unpack(loss.derivatives(), h);
}

// The token-by-token backward exactly as derivations/04-backward.md writes it (Eq. 4.1-4.5).
Grads token_by_token_backward(const gdr2::Head<double>& h, const Mat& dout, const Mat& dstate) {
  gdr2::ForwardOptions keep;
  keep.keep_states = true;
  const auto f = gdr2::recurrent_forward(h, keep);
  Grads g{Mat::Zero(h.T(), h.dk()), Mat::Zero(h.T(), h.dk()), Mat::Zero(h.T(), h.dk()), Mat::Zero(h.T(), h.dk()),
          Mat::Zero(h.T(), h.dv()), Mat::Zero(h.T(), h.dv()), Mat()};
  Mat dS = dstate;  // dL/dS_T
  for (Index t = h.T() - 1; t >= 0; --t) {
    const Vec q = h.q.row(t).transpose(), k = h.k.row(t).transpose(), b = h.b.row(t).transpose();
    const Vec v = h.v.row(t).transpose(), w = h.w.row(t).transpose(), d_o = dout.row(t).transpose();
    const Vec alpha = gdr2::exp_of(h.g.row(t).transpose());
    const Mat& s_prev = f.states[static_cast<size_t>(t)];
    const Mat& s_t = f.states[static_cast<size_t>(t + 1)];
    const Vec e = b.cwiseProduct(k), z = w.cwiseProduct(v);
    const Mat sbar = alpha.asDiagonal() * s_prev;
    const Vec delta = z - sbar.transpose() * e;
    dS += h.scale * q * d_o.transpose();                  // Eq. 4.1: o_t = scale S_t^T q_t
    g.dq.row(t) = (h.scale * s_t * d_o).transpose();
    Vec dk = dS * delta;                                   // Eq. 4.2: S_t = Sbar + k delta^T
    const Vec ddelta = dS.transpose() * k;
    const Vec dz = ddelta, dr = -ddelta;
    const Mat dsbar = dS + e * dr.transpose();             // Eq. 4.3: r = Sbar^T e
    const Vec de = sbar * dr;
    g.dw.row(t) = dz.cwiseProduct(v).transpose();          // Eq. 4.4: z = w * v, e = b * k
    g.dv.row(t) = dz.cwiseProduct(w).transpose();
    g.db.row(t) = de.cwiseProduct(k).transpose();
    dk += de.cwiseProduct(b);
    g.dk.row(t) = dk.transpose();
    g.dg.row(t) = alpha.cwiseProduct(dsbar.cwiseProduct(s_prev).rowwise().sum()).transpose();  // Eq. 4.5
    dS = alpha.asDiagonal() * dsbar;
  }
  g.ds0 = dS;
  return g;
}

Mat random_matrix(gdr2_test::Sampler& s, Index rows, Index cols) {
  Mat m(rows, cols);
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) m(i, j) = s.normal();
  return m;
}

}  // namespace

// Eq. 4.1-4.5 (token-by-token VJP) and 4.6 (the adjoint transition) against automatic differentiation, in every
// gate regime, including the negative-eigenvalue variant and gates exactly at 0, 1, 2.
TEST(DocsBackward, TokenByTokenVjpEqualsAutodiff) {
  int cases = 0;
  for (auto regime : gdr2_test::kAllGates)
    for (std::uint64_t seed = 0; seed < 4; ++seed) {
      const Index T = 3 + static_cast<Index>(seed) * 3, dk = 2 + static_cast<Index>(seed % 3), dv = 1 + static_cast<Index>(seed % 2) * 2;
      const auto h = gdr2_test::random_head(100 + seed, T, dk, dv, regime, true);
      gdr2_test::Sampler s(200 + seed);
      const Mat dout = random_matrix(s, T, dv), dstate = random_matrix(s, dk, dv);
      const Grads ad = autodiff_gradients(h, dout, dstate), vjp = token_by_token_backward(h, dout, dstate);
      const char* r = gdr2_test::name(regime);
      EXPECT_LE(relative(vjp.dq, ad.dq), 1e-11) << r << " seed " << seed;
      EXPECT_LE(relative(vjp.dk, ad.dk), 1e-11) << r << " seed " << seed;
      EXPECT_LE(relative(vjp.dg, ad.dg), 1e-11) << r << " seed " << seed;
      EXPECT_LE(relative(vjp.db, ad.db), 1e-11) << r << " seed " << seed;
      EXPECT_LE(relative(vjp.dv, ad.dv), 1e-11) << r << " seed " << seed;
      EXPECT_LE(relative(vjp.dw, ad.dw), 1e-11) << r << " seed " << seed;
      EXPECT_LE(relative(vjp.ds0, ad.ds0), 1e-11) << r << " seed " << seed;
      ++cases;
    }
  EXPECT_EQ(cases, 24);
}

namespace {

// The chunkwise backward of one chunk exactly as derivations/04-backward.md writes it (Eq. 4.7-4.14), with the
// decay-scaled quantities formed literally (gamma^{-1} included: the test keeps |G| <= 40, so it is finite).
// dout is dL/dO; dstate is dL/dS_n. Adds the chunk's input gradients into g (rows t0..t0+n-1); returns dL/dS_0.
// Also returns, through stable_dG, Eq. 4.15's regrouped dG, for comparison with the literal one.
Mat chunk_backward(const gdr2::Head<double>& h, Index t0, Index n, const Mat& s0, const Mat& dout, const Mat& dstate,
                   Grads& g, double& worst_regrouping) {
  const auto c = gdr2::chunk_intermediates(h, t0, n, s0);
  const Mat Q = h.q.middleRows(t0, n), K = h.k.middleRows(t0, n), B = h.b.middleRows(t0, n);
  const Mat V = h.v.middleRows(t0, n), W = h.w.middleRows(t0, n);
  const Mat gamma = c.gamma, inv_gamma = gdr2::exp_of(Mat(-c.G));
  const Vec gamma_n = gamma.row(n - 1).transpose();
  const Mat Qg = gamma.cwiseProduct(Q), Kbar = inv_gamma.cwiseProduct(K);
  Mat A = Mat::Identity(n, n);
  Mat unit_lower = c.T;
  unit_lower.diagonal().setOnes();
  A = unit_lower.triangularView<Eigen::UnitLower>().solve(A);  // A = (I + T)^{-1}
  const Mat dO = h.scale * dout;                                // O = scale (Qgamma S_0 + Aqk R)
  // Eq. 4.7: O = Qgamma S_0 + Aqk R
  Mat dAqk = (dO * c.R.transpose()).triangularView<Eigen::Lower>();
  Mat dR = c.Aqk.transpose() * dO;
  Mat dQg = dO * s0.transpose();
  Mat dS0 = Qg.transpose() * dO;
  // Eq. 4.8: S_n = Diag(gamma_n) S_0 + Ktail^T R
  dR += c.Ktail * dstate;
  const Mat dKtail = c.R * dstate.transpose();
  dS0 += gamma_n.asDiagonal() * dstate;
  Vec dgamma_n = dstate.cwiseProduct(s0).rowwise().sum();
  // Eq. 4.9: R = U - Y S_0
  const Mat dU = dR, dY = -dR * s0.transpose();
  dS0 -= c.Y.transpose() * dR;
  // Eq. 4.10: U = A Z, Y = A Ebar
  const Mat dA = dU * c.Z.transpose() + dY * c.Ebar.transpose();
  const Mat dZ = A.transpose() * dU;
  Mat dEbar = A.transpose() * dY;
  // Eq. 4.11: A = (I + T)^{-1}
  const Mat dT = Mat(-(A.transpose() * dA * A.transpose())).triangularView<Eigen::StrictlyLower>();
  // Eq. 4.12: T = tril(Ebar Kbar^T, -1), Aqk = tril(Qgamma Kbar^T), Ktail = Kbar * gamma_n
  dEbar += dT * Kbar;
  Mat dKbar = dT.transpose() * c.Ebar;
  dQg += dAqk * Kbar;
  dKbar += dAqk.transpose() * Qg;
  for (Index r = 0; r < n; ++r) {
    dKbar.row(r) += dKtail.row(r).cwiseProduct(gamma_n.transpose());
    dgamma_n += dKtail.row(r).cwiseProduct(Kbar.row(r)).transpose();
  }
  // Eq. 4.13: the gates
  Mat dgamma = dEbar.cwiseProduct(B).cwiseProduct(K);
  dgamma -= dKbar.cwiseProduct(K).cwiseProduct(inv_gamma).cwiseProduct(inv_gamma);
  dgamma += dQg.cwiseProduct(Q);
  dgamma.row(n - 1) += dgamma_n.transpose();
  g.dw.middleRows(t0, n) += dZ.cwiseProduct(V);
  g.dv.middleRows(t0, n) += dZ.cwiseProduct(W);
  g.db.middleRows(t0, n) += dEbar.cwiseProduct(gamma).cwiseProduct(K);
  g.dk.middleRows(t0, n) += dEbar.cwiseProduct(gamma).cwiseProduct(B) + dKbar.cwiseProduct(inv_gamma);
  g.dq.middleRows(t0, n) += dQg.cwiseProduct(gamma);
  // Eq. 4.14: gamma = exp(G), G = cumsum(g) within the chunk
  const Mat dG = dgamma.cwiseProduct(gamma);
  Vec suffix = Vec::Zero(h.dk());
  for (Index r = n - 1; r >= 0; --r) {
    suffix += dG.row(r).transpose();
    g.dg.row(t0 + r) += suffix.transpose();
  }
  // Eq. 4.15: the same dG from products of each decay-scaled quantity with its gradient (no gamma^{-1} needed).
  Mat stable = dEbar.cwiseProduct(c.Ebar) + dQg.cwiseProduct(Qg) - dKbar.cwiseProduct(Kbar);
  for (Index r = 0; r < n; ++r) stable.row(n - 1) += dKtail.row(r).cwiseProduct(c.Ktail.row(r));
  stable.row(n - 1) += gamma_n.cwiseProduct(dstate.cwiseProduct(s0).rowwise().sum()).transpose();
  worst_regrouping = std::max(worst_regrouping, (stable - dG).norm() / (dG.norm() + 1e-300));
  return dS0;
}

// The chunkwise backward over a whole sequence: chunks in reverse, dS carried from each chunk's start to the
// previous chunk's end.
Grads chunkwise_backward_as_derived(const gdr2::Head<double>& h, const Mat& dout, const Mat& dstate, Index C,
                         double& worst_regrouping) {
  Grads g{Mat::Zero(h.T(), h.dk()), Mat::Zero(h.T(), h.dk()), Mat::Zero(h.T(), h.dk()), Mat::Zero(h.T(), h.dk()),
          Mat::Zero(h.T(), h.dv()), Mat::Zero(h.T(), h.dv()), Mat()};
  gdr2::ForwardOptions keep;
  keep.keep_states = true;
  const auto f = gdr2::recurrent_forward(h, keep);
  Mat dS = dstate;
  const Index chunks = (h.T() + C - 1) / C;
  for (Index i = chunks - 1; i >= 0; --i) {
    const Index t0 = i * C, n = std::min(C, h.T() - t0);
    dS = chunk_backward(h, t0, n, f.states[static_cast<size_t>(t0)], dout.middleRows(t0, n), dS, g, worst_regrouping);
  }
  g.ds0 = dS;
  return g;
}

}  // namespace

// Eq. 4.7-4.14 (chunkwise VJP) and 4.15 (its stable regrouping) against automatic differentiation, for several
// chunk sizes (one chunk, several, a short last chunk) and gate regimes. Tolerance as above; with |G| <= 40 the
// literal gamma^{-1} forms carry factors up to e^40 that cancel, which costs up to ~ e^40 * u relative in single
// entries that are themselves tiny; 1e-9 covers it (measured ~1e-13) and still fails any wrong term at O(1).
TEST(DocsBackward, ChunkwiseVjpEqualsAutodiff) {
  int cases = 0;
  double worst_regrouping = 0;
  for (auto regime : {gdr2_test::Gates::typical, gdr2_test::Gates::weak_decay, gdr2_test::Gates::negative_eig,
                      gdr2_test::Gates::gate_edges, gdr2_test::Gates::raw_keys})
    for (Index C : {1, 3, 8})
      for (std::uint64_t seed = 0; seed < 2; ++seed) {
        const Index T = 8 + static_cast<Index>(seed) * 3, dk = 3, dv = 2;
        auto h = gdr2_test::random_head(300 + seed, T, dk, dv, regime, true);
        h.g = h.g.cwiseMax(-5.0);  // |G| <= 8 * 5 = 40 within a chunk of <= 8 tokens
        gdr2_test::Sampler s(400 + seed);
        const Mat dout = random_matrix(s, T, dv), dstate = random_matrix(s, dk, dv);
        const Grads ad = autodiff_gradients(h, dout, dstate);
        const Grads cw = chunkwise_backward_as_derived(h, dout, dstate, C, worst_regrouping);
        const std::string at = std::string(gdr2_test::name(regime)) + " C " + std::to_string(C);
        EXPECT_LE(relative(cw.dq, ad.dq), 1e-9) << at;
        EXPECT_LE(relative(cw.dk, ad.dk), 1e-9) << at;
        EXPECT_LE(relative(cw.dg, ad.dg), 1e-9) << at;
        EXPECT_LE(relative(cw.db, ad.db), 1e-9) << at;
        EXPECT_LE(relative(cw.dv, ad.dv), 1e-9) << at;
        EXPECT_LE(relative(cw.dw, ad.dw), 1e-9) << at;
        EXPECT_LE(relative(cw.ds0, ad.ds0), 1e-9) << at;
        ++cases;
      }
  EXPECT_EQ(cases, 30);
  EXPECT_LE(worst_regrouping, 1e-9);
}

// Negative control for the token-by-token test: dropping the erase term of Eq. 4.3 (dSbar = dS instead of dS + e dr^T),
// a plausible bug, is caught.
TEST(DocsBackward, VjpCheckRejectsAMissingEraseTerm) {
  const auto h = gdr2_test::random_head(5, 6, 3, 2, gdr2_test::Gates::typical, true);
  gdr2_test::Sampler s(6);
  const Mat dout = random_matrix(s, 6, 2), dstate = random_matrix(s, 3, 2);
  const Grads ad = autodiff_gradients(h, dout, dstate);
  // The bug in isolation: the adjoint transition D (I - e k^T) dS replaced by D dS changes dS_0 at O(1).
  gdr2::ForwardOptions keep;
  keep.keep_states = true;
  Mat dS = dstate;
  for (Index t = h.T() - 1; t >= 0; --t) {
    dS += h.scale * h.q.row(t).transpose() * dout.row(t);
    dS = gdr2::exp_of(h.g.row(t).transpose()).asDiagonal() * dS;  // missing "- e k^T dS"
  }
  EXPECT_GT(relative(dS, ad.ds0), 1e-2);
}

// Eq. 4.6: one step's adjoint is D_t (I - e_t k_t^T), the transpose of the forward transition (I - k_t e_t^T) D_t.
TEST(DocsBackward, AdjointOfOneStepIsTheTransposedTransition) {
  const auto h = gdr2_test::random_head(9, 1, 5, 4, gdr2_test::Gates::negative_eig, true);
  gdr2_test::Sampler s(10);
  const Mat dstate = random_matrix(s, 5, 4);
  const Grads ad = autodiff_gradients(h, Mat::Zero(1, 4), dstate);
  const Vec k = h.k.row(0).transpose(), e = h.b.row(0).transpose().cwiseProduct(k);
  const Vec alpha = gdr2::exp_of(h.g.row(0).transpose());
  const Mat adjoint = alpha.asDiagonal() * (Mat::Identity(5, 5) - e * k.transpose()) * dstate;
  EXPECT_LE(relative(ad.ds0, adjoint), 1e-13);  // a 5x5 product: a few ulps
}

// Eq. 2.5 (paper Eq. 48): a tied wrapper's gradient is the sum over the channels it ties. KDA's beta_t feeds
// b_t = beta_t 1 and w_t = beta_t 1, so dL/dbeta_t = sum_i dL/db_t[i] + sum_j dL/dw_t[j]; Gated DeltaNet's a_t feeds
// g_t = a_t 1, so dL/da_t = sum_i dL/dg_t[i]. Left: AD through the members' own code (gdr2/family.hpp); right: AD
// through GDR-2.
TEST(DocsBackward, TiedGateGradientIsTheSumOverChannels) {
  const Index T = 7, dk = 4, dv = 3;
  const auto base = gdr2_test::random_head(21, T, dk, dv, gdr2_test::Gates::typical, true);
  gdr2_test::Sampler s(22);
  Vec beta(T), a(T);
  for (Index t = 0; t < T; ++t) { beta(t) = s.uniform(0.0, 1.0); a(t) = s.uniform(-2.0, -0.1); }
  const Mat dout = random_matrix(s, T, dv), dstate = random_matrix(s, dk, dv);
  auto loss_of = [&](const gdr2::Forward<AD>& f, Index n) {
    AD loss(0.0, Eigen::VectorXd::Zero(n));
    for (Index i = 0; i < T; ++i)
      for (Index j = 0; j < dv; ++j) loss += dout(i, j) * f.o(i, j);
    for (Index i = 0; i < dk; ++i)
      for (Index j = 0; j < dv; ++j) loss += dstate(i, j) * f.s(i, j);
    return loss;
  };
  // Gated DeltaNet member, AD over (beta, a): 2T variables.
  gdr2::GatedDeltaNetHead<double> gdn{base.q, base.k, base.v, a, beta, base.s0, base.scale};
  gdr2::GatedDeltaNetHead<AD> gdn_ad{gdr2::cast_matrix<AD>(gdn.q), gdr2::cast_matrix<AD>(gdn.k),
                                     gdr2::cast_matrix<AD>(gdn.v), gdr2::Vector<AD>(T), gdr2::Vector<AD>(T),
                                     gdr2::cast_matrix<AD>(gdn.s0), AD(gdn.scale)};
  for (Index t = 0; t < T; ++t) {
    gdn_ad.beta(t) = AD(beta(t), Eigen::VectorXd::Unit(2 * T, t));
    gdn_ad.g(t) = AD(a(t), Eigen::VectorXd::Unit(2 * T, T + t));
  }
  const Eigen::VectorXd member = loss_of(gdr2::gated_deltanet_forward(gdn_ad), 2 * T).derivatives();
  // The same problem as GDR-2 (as_gdr2), AD over every input.
  const auto tied = gdr2::as_gdr2(gdn);
  const Grads full = autodiff_gradients(tied, dout, dstate);
  for (Index t = 0; t < T; ++t) {
    const double via_channels = full.db.row(t).sum() + full.dw.row(t).sum();
    EXPECT_NEAR(member(t), via_channels, 1e-11 * (std::abs(via_channels) + 1)) << "dbeta at t = " << t;
    EXPECT_NEAR(member(T + t), full.dg.row(t).sum(), 1e-11 * (std::abs(member(T + t)) + 1)) << "da at t = " << t;
  }
  // The erase and write halves are both needed: b alone (or w alone) is a different, wrong number.
  double worst_half = 0;
  for (Index t = 0; t < T; ++t)
    worst_half = std::max(worst_half, std::abs(member(t) - full.db.row(t).sum()) / (std::abs(member(t)) + 1e-300));
  EXPECT_GT(worst_half, 1e-3);
}

// Eq. 4.10: the counterexample of derivations/04-backward.md. Two tokens, d_v = 2: upstream dU = [[0, 0], [1, 1]],
// v_1 = (1, -1), w_1 = (1, 0). The true gradient (dU Z^T)_{21} = 1; the KDA shortcut (dU V^T)_{21} = 0 times any
// per-column (or per-row) scalar is 0.
TEST(DocsBackward, ScalarPostScalingOfDaIsWrong) {
  Mat dU(2, 2), V(2, 2), W(2, 2);
  dU << 0, 0, 1, 1;
  V << 1, -1, 0.5, 2;
  W << 1, 0, 0.3, 0.7;
  const Mat Z = W.cwiseProduct(V);
  // AD of L(A) = <dU, A Z> with respect to A's entries: dL/dA = dU Z^T.
  gdr2::Matrix<AD> A(2, 2);
  for (Index i = 0; i < 2; ++i)
    for (Index j = 0; j < 2; ++j) A(i, j) = AD(i == j ? 1.0 : (i > j ? -0.4 : 0.0), Eigen::VectorXd::Unit(4, 2 * i + j));
  const gdr2::Matrix<AD> U = A * gdr2::cast_matrix<AD>(Z);
  AD loss(0.0, Eigen::VectorXd::Zero(4));
  for (Index i = 0; i < 2; ++i)
    for (Index j = 0; j < 2; ++j) loss += dU(i, j) * U(i, j);
  const double true_dA21 = loss.derivatives()(2);
  const Mat dA = dU * Z.transpose();
  EXPECT_DOUBLE_EQ(true_dA21, 1.0);
  EXPECT_DOUBLE_EQ(dA(1, 0), 1.0);
  const Mat unscaled = dU * V.transpose();
  EXPECT_DOUBLE_EQ(unscaled(1, 0), 0.0);  // so c * unscaled(1, 0) = 0 != 1 for every scalar c
  // Positive control: with a KDA write gate (w_s = beta_s 1), column post-scaling is exact.
  Mat W_tied(2, 2);
  W_tied << 0.6, 0.6, 0.3, 0.3;
  const Mat exact_tied = dU * W_tied.cwiseProduct(V).transpose();
  Mat post_scaled = dU * V.transpose();
  for (Index s = 0; s < 2; ++s) post_scaled.col(s) *= W_tied(s, 0);
  EXPECT_LE(relative(post_scaled, exact_tied), 1e-15);
}

namespace {

// Eq. 5.3: FLOPs of one chunk of the dense chunkwise forward (multiply-add = 2), C tokens, d_k = K, d_v = V.
double chunk_flops_formula(double C, double K, double V) {
  return 6 * C * C * K + 4 * C * C * V + 6 * C * K * V + (C * C * C - C) / 3;
}

// The same count by enumerating the loop nests of the dense algorithm (no arithmetic on data, only counting).
double chunk_flops_enumerated(Index C, Index K, Index V) {
  double flops = 0;
  auto matmul = [&](Index m, Index n, Index p) { for (Index i = 0; i < m * n * p; ++i) flops += 2; };
  matmul(C, C, K);  // T = Ebar Kbar^T (stable form: same count)
  matmul(C, C, K);  // Aqk = Qgamma Kbar^T
  for (Index r = 0; r < C; ++r)        // A = (I + T)^{-1}: column c of A by forward substitution,
    for (Index c = 0; c < r; ++c)      // A_rc = -sum_{c <= s < r} T_rs A_sc: (r - c) multiply-adds
      for (Index s = c; s < r; ++s) flops += 2;
  matmul(C, C, K);  // Y = A Ebar
  matmul(C, C, V);  // U = A Z
  matmul(C, K, V);  // Y S_0
  matmul(C, K, V);  // Qgamma S_0
  matmul(C, C, V);  // Aqk R
  matmul(K, C, V);  // Ktail^T R
  return flops;
}

}  // namespace

// Eq. 5.3 and 5.4: the FLOP formula equals the enumerated count of the loop nests exactly, and the per-chunk and
// per-forward figures quoted in derivations/05-numerics-and-cost.md and docs/performance.md.
TEST(DocsBackward, FlopAndByteCountsMatchTheDerivation) {
  for (Index C : {1, 16, 64})
    for (Index K : {1, 64, 128})
      for (Index V : {1, 128}) {
        const double exact = chunk_flops_enumerated(C, K, V);
        EXPECT_EQ(chunk_flops_formula(static_cast<double>(C), static_cast<double>(K), static_cast<double>(V)), exact)
            << "C " << C << " K " << K << " V " << V;
      }
  // Quoted: 11,621,696 FLOPs per chunk at C = 64, K = V = 128; 181.6 kFLOP per token; the CKV terms 54% of it.
  EXPECT_EQ(static_cast<long long>(chunk_flops_enumerated(64, 128, 128)), 11621696LL);
  EXPECT_NEAR(chunk_flops_enumerated(64, 128, 128) / 64 / 1e3, 181.6, 0.05);
  EXPECT_NEAR(6.0 * 64 * 128 * 128 / chunk_flops_enumerated(64, 128, 128), 0.54, 0.005);
  // Quoted: 47.6 GFLOP for the paper's forward (B = 4, T = 4096, H = 16: 4096 chunks of 64).
  EXPECT_NEAR(4.0 * 4096 / 64 * 16 * chunk_flops_enumerated(64, 128, 128) / 1e9, 47.6, 0.05);
  // Eq. 5.4: bytes per token and head: q, k, b in bf16 (3 K x 2), g in fp32 (K x 4), v, w in bf16 (2 V x 2),
  // o in bf16 (V x 2) = 2048 B at K = V = 128; the states h0, ht in fp32 once per sequence and head.
  const long long per_token = 3 * 128 * 2 + 128 * 4 + 2 * 128 * 2 + 128 * 2;
  EXPECT_EQ(per_token, 2048);
  const long long tokens = 4LL * 4096 * 16, states = 2LL * 4 * 16 * 128 * 128 * 4;
  EXPECT_EQ(tokens * per_token + states, 545259520LL);  // quoted: 0.545 GB, 0.18 ms at 3.0 TB/s
  EXPECT_NEAR(static_cast<double>(tokens * per_token + states) / 3.0e12 * 1e3, 0.18, 0.005);
  // Quoted: arithmetic intensity 87 FLOP/B (47.6 GFLOP over 0.545 GB).
  EXPECT_NEAR(4.0 * 4096 / 64 * 16 * chunk_flops_enumerated(64, 128, 128) / static_cast<double>(tokens * per_token + states),
              87.0, 0.5);
  // Quoted: per chunk 64 * 2048 = 131,072 B of inputs/outputs; a two-pass kernel storing and re-reading each chunk's
  // fp32 starting state adds 2 K V 4 = 131,072 B per chunk, 536,870,912 B at the paper's shape (floor 0.36 ms).
  EXPECT_EQ(64 * per_token, 131072LL);
  EXPECT_EQ(2LL * 128 * 128 * 4, 131072LL);
  const long long chunk_states = 4LL * (4096 / 64) * 16 * 2 * 128 * 128 * 4;
  EXPECT_EQ(chunk_states, 536870912LL);
  EXPECT_NEAR(static_cast<double>(tokens * per_token + states + chunk_states) / 3.0e12 * 1e3, 0.36, 0.005);
  // Quoted: a decode step of 256 sequences x 16 heads reads and writes 536,870,912 B of fp32 state, 0.19 ms at 2.8 TB/s.
  const long long decode_state = 2LL * 256 * 16 * 128 * 128 * 4;
  EXPECT_EQ(decode_state, 536870912LL);
  EXPECT_NEAR(static_cast<double>(decode_state) / 2.8e12 * 1e3, 0.19, 0.005);
}
