// Automatic differentiation as an independent check of the backward: Eigen's forward-mode AutoDiffScalar run
// through the reference FORWARD forms (which never call the backward code).
//   adjoint identity  <VJP(dout, ds_final), x_dot> == <dout, o_dot> + <ds_final, S_dot>  for random x_dot
//   full Jacobians    every row of the AD Jacobian == the VJP of the corresponding unit upstream vector
//   Eq. 48            the family gradients through the adapters == AD of the members' own forward code
//   gates             the layer's gate parameterisation (spec section 7) through its backward == AD
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>
#include <boost/multiprecision/cpp_bin_float.hpp>
#include <boost/multiprecision/eigen.hpp>
#include <gdr2/backward.hpp>
#include <gdr2/autodiff.hpp>
#include "generators.hpp"
#include "wrong_backwards.hpp"

using gdr2::Index;
using mp50 = boost::multiprecision::cpp_bin_float_50;
using namespace gdr2_test;

namespace {

template <class S>
using Dir = Eigen::AutoDiffScalar<Eigen::Matrix<S, 1, 1>>;  // one directional derivative

// Inputs seeded with value x and derivative x_dot; returns <grads, x_dot> for a given Gradients.
template <class S>
struct Directional {
  gdr2::Head<Dir<S>> head;
  gdr2::Head<S> direction;  // x_dot, as a head (q_dot, k_dot, ...)

  Directional(const gdr2::Head<S>& x, std::uint64_t seed) {
    direction = random_head(seed, x.T(), x.dk(), x.dv(), Gates::raw_keys).template cast<S>();
    head = x.template cast<Dir<S>>();
    auto seed_tensor = [](gdr2::Matrix<Dir<S>>& m, const gdr2::Matrix<S>& dot) {
      for (Index i = 0; i < m.rows(); ++i)
        for (Index j = 0; j < m.cols(); ++j) m(i, j).derivatives()(0) = dot(i, j);
    };
    seed_tensor(head.q, direction.q); seed_tensor(head.k, direction.k); seed_tensor(head.g, direction.g);
    seed_tensor(head.b, direction.b); seed_tensor(head.v, direction.v); seed_tensor(head.w, direction.w);
    seed_tensor(head.s0, direction.s0);
  }
  S pair(const gdr2::Gradients<S>& g) const {  // <VJP, x_dot>
    return g.dq.cwiseProduct(direction.q).sum() + g.dk.cwiseProduct(direction.k).sum() +
           g.dg.cwiseProduct(direction.g).sum() + g.db.cwiseProduct(direction.b).sum() +
           g.dv.cwiseProduct(direction.v).sum() + g.dw.cwiseProduct(direction.w).sum() +
           g.ds0.cwiseProduct(direction.s0).sum();
  }
};

// <dout, o_dot> + <ds_final, S_dot> from a forward run on directional-derivative scalars.
template <class S>
S forward_pairing(const gdr2::Forward<Dir<S>>& f, const gdr2::Matrix<S>& dout, const gdr2::Matrix<S>& dsf) {
  S sum = 0;
  for (Index i = 0; i < f.o.rows(); ++i)
    for (Index j = 0; j < f.o.cols(); ++j) sum += dout(i, j) * f.o(i, j).derivatives()(0);
  for (Index i = 0; i < f.s.rows(); ++i)
    for (Index j = 0; j < f.s.cols(); ++j) sum += dsf(i, j) * f.s(i, j).derivatives()(0);
  return sum;
}

template <class S>
double adjoint_mismatch(const S& lhs, const S& rhs) {
  using std::abs;
  const S scale = abs(rhs) + abs(lhs);
  return gdr2::to_double(scale == S(0) ? S(0) : S(abs(lhs - rhs) / scale));
}

}  // namespace

RC_GTEST_PROP(Autodiff, AdjointIdentityMultiprecision, ()) {
  const auto spec = *gen_problem(60, 12, 1500);
  const Index chunk = *rc::gen::inRange<Index>(1, 30);
  const auto h = spec.head().cast<mp50>();
  const auto up = random_upstream(spec.seed, spec.T, spec.dk, spec.dv);
  const auto dout = gdr2::cast_matrix<mp50>(up.dout), dsf = gdr2::cast_matrix<mp50>(up.ds_final);
  const Directional<mp50> x(h, spec.seed + 7);
  const mp50 jvp = forward_pairing(gdr2::recurrent_forward(x.head), dout, dsf);
  // 50-digit rounding of two different evaluations of the same bilinear form: ~1e-48, asserted at 1e-40.
  RC_ASSERT(adjoint_mismatch(x.pair(gdr2::chunkwise_backward(h, dout, dsf, chunk)), jvp) <= 1e-40);
  RC_ASSERT(adjoint_mismatch(x.pair(gdr2::recurrent_backward(h, dout, dsf)), jvp) <= 1e-40);
  const mp50 jvp_chunkwise = forward_pairing(gdr2::chunkwise_forward(x.head, chunk), dout, dsf);
  RC_ASSERT(adjoint_mismatch(jvp_chunkwise, jvp) <= 1e-40);
}

RC_GTEST_PROP(Autodiff, AdjointIdentityDouble, ()) {
  const auto spec = *gen_problem(200, 48, 200000);
  const auto h = spec.head();
  const auto up = random_upstream(spec.seed, spec.T, spec.dk, spec.dv);
  const Directional<double> x(h, spec.seed + 7);
  const double jvp = forward_pairing(gdr2::recurrent_forward(x.head), up.dout, up.ds_final);
  // Both sides are sums of ~T * d_k * d_v products of O(1) terms carrying relative errors ~(T + C) d u; the
  // pairing normalised by |lhs| + |rhs| can lose digits to cancellation: 1e-9 allows 1e4 x that.
  RC_ASSERT(adjoint_mismatch(x.pair(gdr2::chunkwise_backward(h, up.dout, up.ds_final, 64)), jvp) <= 1e-9);
}

// Full Jacobian of (o, S_T) with respect to every input by AD; each row equals the VJP of a unit upstream.
TEST(Autodiff, FullJacobianRowsEqualUnitVjps) {
  const Index T = 5, dk = 3, dv = 2;
  const auto h = random_head(31, T, dk, dv, Gates::negative_eig);
  using ADX = Eigen::AutoDiffScalar<Eigen::VectorXd>;
  const Index n_inputs = T * (4 * dk + 2 * dv) + dk * dv;
  auto ad = h.cast<ADX>();
  Index slot = 0;
  for (auto* m : {&ad.q, &ad.k, &ad.g, &ad.b, &ad.v, &ad.w, &ad.s0})
    for (Index i = 0; i < m->rows(); ++i)
      for (Index j = 0; j < m->cols(); ++j) (*m)(i, j).derivatives() = Eigen::VectorXd::Unit(n_inputs, slot++);
  const auto f = gdr2::chunkwise_forward(ad, 2);
  auto flatten = [](const gdr2::Gradients<double>& g) {
    Eigen::VectorXd out(g.dq.size() * 4 + g.dv.size() * 2 + g.ds0.size());
    Index at = 0;
    for (const auto* m : {&g.dq, &g.dk, &g.dg, &g.db, &g.dv, &g.dw, &g.ds0})
      for (Index i = 0; i < m->size(); ++i) out(at++) = m->data()[i];  // row-major, same order as seeded
    return out;
  };
  double worst = 0;
  for (Index which = 0; which < T * dv + dk * dv; ++which) {
    gdr2::Matrix<double> dout = gdr2::Matrix<double>::Zero(T, dv), dsf = gdr2::Matrix<double>::Zero(dk, dv);
    const ADX& output = which < T * dv ? f.o.data()[which] : f.s.data()[which - T * dv];
    if (which < T * dv) dout.data()[which] = 1; else dsf.data()[which - T * dv] = 1;
    const Eigen::VectorXd vjp = flatten(gdr2::chunkwise_backward(h, dout, dsf, 2));
    const Eigen::VectorXd row = output.derivatives();
    worst = std::max(worst, (vjp - row).norm() / std::max(row.norm(), 1e-300));
  }
  // Two double evaluations of the same derivatives of a 5-token problem: ~1e-15; asserted 1e-12.
  EXPECT_LE(worst, 1e-12);
}

// Eq. 48 and the scalar-decay reduction: the family gradients through the GDR-2 adapters equal AD of the
// members' own forward code (which shares nothing with the GDR-2 backward).
TEST(Autodiff, FamilyGradientsByEq48MatchMemberAutodiff) {
  const Index T = 12, dk = 4, dv = 3;
  const auto base = random_head(41, T, dk, dv).cast<mp50>();
  const auto up = random_upstream(41, T, dk, dv);
  const auto dout = gdr2::cast_matrix<mp50>(up.dout), dsf = gdr2::cast_matrix<mp50>(up.ds_final);
  using ADV = Eigen::AutoDiffScalar<Eigen::Matrix<mp50, Eigen::Dynamic, 1>>;
  gdr2::Vector<mp50> beta(T), decay(T);
  Sampler s(41);
  for (Index t = 0; t < T; ++t) { beta(t) = mp50(s.uniform(0, 1)); decay(t) = mp50(s.uniform(-3, 0)); }
  auto loss_gradient = [&](const gdr2::Forward<ADV>& f) {
    ADV l(mp50(0));
    for (Index i = 0; i < f.o.size(); ++i) l += f.o.data()[i] * dout.data()[i];
    for (Index i = 0; i < f.s.size(); ++i) l += f.s.data()[i] * dsf.data()[i];
    return gdr2::Vector<mp50>(l.derivatives());
  };
  auto seeded = [&](const gdr2::Vector<mp50>& x, Index offset, Index n) {
    gdr2::Vector<ADV> out(x.size());
    for (Index t = 0; t < x.size(); ++t) out(t) = ADV(x(t), gdr2::Vector<mp50>::Unit(n, offset + t));
    return out;
  };
  auto lift = [&](const gdr2::Matrix<mp50>& m, Index n) {
    gdr2::Matrix<ADV> out(m.rows(), m.cols());
    for (Index i = 0; i < m.size(); ++i) out.data()[i] = ADV(m.data()[i], gdr2::Vector<mp50>::Zero(n));
    return out;
  };
  auto mismatch = [](const gdr2::Vector<mp50>& a, const gdr2::Vector<mp50>& b) { return relative_error(a, b); };
  {  // KDA: dbeta_t = sum_i db_t[i] + sum_j dw_t[j]
    const gdr2::KdaHead<ADV> kda{lift(base.q, T), lift(base.k, T), lift(base.g, T), lift(base.v, T), seeded(beta, 0, T),
                                 lift(base.s0, T), ADV(base.scale, gdr2::Vector<mp50>::Zero(T))};
    const gdr2::Vector<mp50> ad = loss_gradient(gdr2::kda_forward(kda));
    const gdr2::KdaHead<mp50> plain{base.q, base.k, base.g, base.v, beta, base.s0, base.scale};
    EXPECT_LE(mismatch(gdr2::kda_backward(plain, dout, dsf, 5).dbeta, ad), 1e-40);
  }
  {  // Gated DeltaNet: da_t = sum_d dg_t[d], and dbeta_t by Eq. 48
    const gdr2::GatedDeltaNetHead<ADV> gdn{lift(base.q, 2 * T), lift(base.k, 2 * T), lift(base.v, 2 * T),
                                           seeded(decay, 0, 2 * T), seeded(beta, T, 2 * T), lift(base.s0, 2 * T),
                                           ADV(base.scale, gdr2::Vector<mp50>::Zero(2 * T))};
    const gdr2::Vector<mp50> ad = loss_gradient(gdr2::gated_deltanet_forward(gdn));
    const gdr2::GatedDeltaNetHead<mp50> plain{base.q, base.k, base.v, decay, beta, base.s0, base.scale};
    const auto g = gdr2::gated_deltanet_backward(plain, dout, dsf, 5);
    EXPECT_LE(mismatch(g.dg, ad.head(T)), 1e-40);
    EXPECT_LE(mismatch(g.dbeta, ad.tail(T)), 1e-40);
  }
  {  // DeltaNet
    const gdr2::DeltaNetHead<ADV> dn{lift(base.q, T), lift(base.k, T), lift(base.v, T), seeded(beta, 0, T),
                                     lift(base.s0, T), ADV(base.scale, gdr2::Vector<mp50>::Zero(T))};
    const gdr2::DeltaNetHead<mp50> plain{base.q, base.k, base.v, beta, base.s0, base.scale};
    EXPECT_LE(mismatch(gdr2::deltanet_backward(plain, dout, dsf, 5).dbeta, loss_gradient(gdr2::deltanet_forward(dn))), 1e-40);
  }
}

// The gate parameterisation: gates_backward(chunkwise_backward(...)) equals AD through apply_gates and the
// forward, for the logits x_b, x_w, x_f, the rate a and the bias delta.
TEST(Autodiff, GateParameterisationMatchesAutodiff) {
  const Index T = 9, dk = 3, dv = 2;
  const auto base = random_head(43, T, dk, dv);
  const auto up = random_upstream(43, T, dk, dv);
  Sampler s(43);
  gdr2::GateInputs<double> gi;
  gi.x_b.resize(T, dk); gi.x_w.resize(T, dv); gi.x_f.resize(T, dk); gi.delta.resize(dk);
  for (Index i = 0; i < gi.x_b.size(); ++i) gi.x_b.data()[i] = 3 * s.normal();
  for (Index i = 0; i < gi.x_w.size(); ++i) gi.x_w.data()[i] = 3 * s.normal();
  for (Index i = 0; i < gi.x_f.size(); ++i) gi.x_f.data()[i] = 3 * s.normal();
  for (Index i = 0; i < dk; ++i) gi.delta(i) = s.normal();
  gi.a = -0.7;
  // Analytic: gate values -> GDR-2 backward -> gates_backward.
  auto head = base;
  const auto gates = gdr2::apply_gates(gi);
  head.b = gates.b; head.w = gates.w; head.g = gates.g;
  const auto g = gdr2::chunkwise_backward(head, up.dout, up.ds_final, 4);
  const auto analytic = gdr2::gates_backward(gi, g.db, g.dw, g.dg);
  // AD: every gate input seeded.
  using ADX = Eigen::AutoDiffScalar<Eigen::VectorXd>;
  const Index n = 2 * T * dk + T * dv + 1 + dk;
  gdr2::GateInputs<ADX> ad;
  Index slot = 0;
  auto seed = [&](const gdr2::Matrix<double>& m) {
    gdr2::Matrix<ADX> out(m.rows(), m.cols());
    for (Index i = 0; i < m.size(); ++i) out.data()[i] = ADX(m.data()[i], Eigen::VectorXd::Unit(n, slot++));
    return out;
  };
  ad.x_b = seed(gi.x_b); ad.x_w = seed(gi.x_w); ad.x_f = seed(gi.x_f);
  ad.a = ADX(gi.a, Eigen::VectorXd::Unit(n, slot++));
  ad.delta.resize(dk);
  for (Index i = 0; i < dk; ++i) ad.delta(i) = ADX(gi.delta(i), Eigen::VectorXd::Unit(n, slot++));
  auto ad_head = base.cast<ADX>();
  for (auto* m : {&ad_head.q, &ad_head.k, &ad_head.v, &ad_head.s0})
    for (Index i = 0; i < m->size(); ++i) m->data()[i].derivatives() = Eigen::VectorXd::Zero(n);
  ad_head.scale.derivatives() = Eigen::VectorXd::Zero(n);
  const auto ad_gates = gdr2::apply_gates(ad);
  ad_head.b = ad_gates.b; ad_head.w = ad_gates.w; ad_head.g = ad_gates.g;
  const auto f = gdr2::recurrent_forward(ad_head);
  ADX l(0.0, Eigen::VectorXd::Zero(n));
  for (Index i = 0; i < f.o.size(); ++i) l += f.o.data()[i] * up.dout.data()[i];
  for (Index i = 0; i < f.s.size(); ++i) l += f.s.data()[i] * up.ds_final.data()[i];
  Eigen::VectorXd expected = l.derivatives(), got(n);
  Index at = 0;
  for (const auto* m : {&analytic.dx_b, &analytic.dx_w, &analytic.dx_f})
    for (Index i = 0; i < m->size(); ++i) got(at++) = m->data()[i];
  got(at++) = analytic.da;
  for (Index i = 0; i < dk; ++i) got(at++) = analytic.ddelta(i);
  // Double, a 9-token problem: ~1e-15 expected; 1e-11 asserted.
  EXPECT_LE((got - expected).norm() / expected.norm(), 1e-11);
}

// Negative controls: each wrong backward breaks the adjoint identity; the scalar post-scale is exact on KDA's
// tied gates (so it is the realistic bug it claims to be) and wrong as soon as the gates are channel-wise.
TEST(Autodiff, NegativeControlsBreakTheAdjointIdentity) {
  const auto h = random_head(51, 40, 6, 5).cast<mp50>();
  const auto up = random_upstream(51, 40, 6, 5);
  const auto dout = gdr2::cast_matrix<mp50>(up.dout), dsf = gdr2::cast_matrix<mp50>(up.ds_final);
  const Directional<mp50> x(h, 52);
  const mp50 jvp = forward_pairing(gdr2::recurrent_forward(x.head), dout, dsf);
  EXPECT_LE(adjoint_mismatch(x.pair(gdr2::chunkwise_backward(h, dout, dsf, 16)), jvp), 1e-40);
  EXPECT_GT(adjoint_mismatch(x.pair(wrong_backward_scalar_postscale(h, dout, dsf, 16)), jvp), 1e-6);
  EXPECT_GT(adjoint_mismatch(x.pair(wrong_backward_no_last_chunk_decay(h, dout, dsf, 16)), jvp), 1e-6);
  EXPECT_GT(adjoint_mismatch(x.pair(wrong_backward_no_ds0(h, dout, dsf, 16)), jvp), 1e-6);

  gdr2::KdaHead<mp50> kda{h.q, h.k, h.g, h.v, h.b.col(0), h.s0, h.scale};
  const auto tied = gdr2::as_gdr2(kda);
  const auto right = gdr2::chunkwise_backward(tied, dout, dsf, 16);
  const auto shortcut = wrong_backward_scalar_postscale(tied, dout, dsf, 16);
  for (size_t t = 0; t < 7; ++t)
    EXPECT_LE(relative_error(*gdr2::named_tensors(shortcut)[t].second, *gdr2::named_tensors(right)[t].second), 1e-40)
        << gdr2::named_tensors(right)[t].first;
}
