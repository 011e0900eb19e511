// Fast-weight regression view (spec section 4, Eq. 13-15): S_t is the exact minimiser of
//   L_t(S) = ||S - Sbar_t||_F^2 - 2 < S^T k_t, z_t - Sbar_t^T e_t >.
// Its gradient 2 (S - Sbar_t) - 2 k_t (z_t - Sbar_t^T e_t)^T vanishes at S_t, and since the Hessian is 2 I,
// L_t(S_t + E) - L_t(S_t) = ||E||_F^2 > 0 exactly for every E != 0.
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>
#include <boost/multiprecision/cpp_bin_float.hpp>
#include <boost/multiprecision/eigen.hpp>
#include <gdr2/reference.hpp>
#include "generators.hpp"

using gdr2::Index;
using mp50 = boost::multiprecision::cpp_bin_float_50;
using namespace gdr2_test;

namespace {

template <class S>
struct LocalObjective {
  gdr2::Matrix<S> sbar;  // D_t S_{t-1}
  gdr2::Vector<S> k, target;  // k_t and z_t - Sbar_t^T e_t

  LocalObjective(const gdr2::Head<S>& h, Index t, const gdr2::Matrix<S>& s_prev) {
    sbar = gdr2::exp_of(h.g.row(t).transpose()).asDiagonal() * s_prev;
    k = h.k.row(t).transpose();
    const gdr2::Vector<S> e = h.b.row(t).transpose().cwiseProduct(k);
    target = h.w.row(t).transpose().cwiseProduct(h.v.row(t).transpose()) - sbar.transpose() * e;
  }
  S value(const gdr2::Matrix<S>& s) const {  // Eq. 13
    return (s - sbar).squaredNorm() - S(2) * (s.transpose() * k).dot(target);
  }
  gdr2::Matrix<S> gradient(const gdr2::Matrix<S>& s) const {  // Eq. 14
    return S(2) * (s - sbar) - S(2) * k * target.transpose();
  }
};

}  // namespace

RC_GTEST_PROP(FastWeight, StateIsTheMinimiserOfTheLocalObjective, ()) {
  const auto spec = *gen_problem(40, 24, 4000);
  RC_PRE(spec.T > 0);
  const auto h = spec.head().cast<mp50>();
  gdr2::ForwardOptions keep;
  keep.keep_states = true;
  const auto f = gdr2::recurrent_forward(h, keep);
  const Index t = *rc::gen::inRange<Index>(0, spec.T);
  const LocalObjective<mp50> L(h, t, f.states[t]);
  const auto& s_t = f.states[t + 1];
  // Gradient at S_t: zero up to rounding of the 50-digit arithmetic (relative to the objective's scale).
  const mp50 scale = (s_t - L.sbar).norm() + L.k.norm() * L.target.norm() + mp50(1);
  RC_ASSERT(gdr2::to_double(L.gradient(s_t).norm() / scale) <= 1e-40);
  // Any perturbation E raises the objective by exactly ||E||^2.
  Sampler s(spec.seed + 1);
  gdr2::Matrix<mp50> E(spec.dk, spec.dv);
  for (Index i = 0; i < E.rows(); ++i)
    for (Index j = 0; j < E.cols(); ++j) E(i, j) = mp50(s.normal() * 1e-3);
  const mp50 rise = L.value(s_t + E) - L.value(s_t);
  RC_ASSERT(rise > mp50(0));
  RC_ASSERT(gdr2::to_double(abs(rise - E.squaredNorm()) / E.squaredNorm()) <= 1e-30);
}

// Negative control: a state computed with the decay applied after the edit is not the minimiser.
TEST(FastWeight, WrongStateHasNonZeroGradient) {
  const auto h = random_head(9, 5, 6, 4).cast<mp50>();
  gdr2::ForwardOptions keep;
  keep.keep_states = true;
  const auto f = gdr2::recurrent_forward(h, keep);
  const LocalObjective<mp50> L(h, 2, f.states[2]);
  const gdr2::Matrix<mp50> wrong = gdr2::exp_of(h.g.row(2).transpose()).asDiagonal() *
                                   (f.states[2] + L.k * (h.w.row(2).cwiseProduct(h.v.row(2)) -
                                                         (f.states[2].transpose() * h.b.row(2).cwiseProduct(h.k.row(2)).transpose()).transpose()));
  EXPECT_GT(gdr2::to_double(L.gradient(wrong).norm()), 1e-6);
}
