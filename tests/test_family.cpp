// Each family member (spec section 3), run by its own independent code, equals GDR-2 with the tied gates of
// its adapter. In cpp_bin_float_50 the two are the same rational function evaluated in a different order, so
// they agree to rounding (1e-40, see test_forward_forms.cpp for the margin argument).
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>
#include <boost/multiprecision/cpp_bin_float.hpp>
#include <boost/multiprecision/eigen.hpp>
#include <gdr2/reference.hpp>
#include "generators.hpp"

using gdr2::Index;
using mp50 = boost::multiprecision::cpp_bin_float_50;
using namespace gdr2_test;

constexpr double kMultiprecisionIdentity = 1e-40;

namespace {

// Per-token scalars from a sampler: beta_t in [0, 1] (or [0, 2]), scalar log-decay in [-5, 0].
gdr2::Vector<double> per_token(Sampler& s, Index T, double lo, double hi) {
  gdr2::Vector<double> x(T);
  for (auto& e : x) e = s.uniform(lo, hi);
  return x;
}

template <class To>
gdr2::Vector<To> cast_vector(const gdr2::Vector<double>& x) {
  return gdr2::cast_matrix<To>(gdr2::Matrix<double>(x)).col(0);
}

struct Members {
  gdr2::KdaHead<mp50> kda;
  gdr2::GatedDeltaNetHead<mp50> gdn;
  gdr2::DeltaNetHead<mp50> deltanet;
  gdr2::GlaHead<mp50> gla;
};

Members make_members(const ProblemSpec& spec) {
  const auto base = spec.head().cast<mp50>();
  Sampler s(spec.seed ^ 0x5eedULL);
  const auto beta = cast_vector<mp50>(per_token(s, spec.T, 0.0, spec.regime == Gates::negative_eig ? 2.0 : 1.0));
  const auto scalar_decay = cast_vector<mp50>(per_token(s, spec.T, -5.0, 0.0));
  Members m;
  m.kda = {base.q, base.k, base.g, base.v, beta, base.s0, base.scale};
  m.gdn = {base.q, base.k, base.v, scalar_decay, beta, base.s0, base.scale};
  m.deltanet = {base.q, base.k, base.v, beta, base.s0, base.scale};
  m.gla = {base.q, base.k, base.g, base.v, base.s0, base.scale};
  return m;
}

template <class MemberHead, class MemberForward>
void expect_collapse(const MemberHead& member, MemberForward member_forward, Index chunk) {
  const auto expected = member_forward(member);
  const auto as_gdr2 = gdr2::as_gdr2(member);
  const auto rec = gdr2::recurrent_forward(as_gdr2);
  const auto chk = gdr2::chunkwise_forward(as_gdr2, chunk);
  RC_ASSERT(relative_error(rec.o, expected.o) <= kMultiprecisionIdentity);
  RC_ASSERT(relative_error(rec.s, expected.s) <= kMultiprecisionIdentity);
  RC_ASSERT(relative_error(chk.o, expected.o) <= kMultiprecisionIdentity);
  RC_ASSERT(relative_error(chk.s, expected.s) <= kMultiprecisionIdentity);
}

}  // namespace

RC_GTEST_PROP(FamilyCollapse, KdaEqualsTiedGdr2, ()) {
  const auto spec = *gen_problem(150, 32, 6000);
  expect_collapse(make_members(spec).kda, [](const auto& h) { return gdr2::kda_forward(h); },
                  *rc::gen::inRange<Index>(1, 70));
}

RC_GTEST_PROP(FamilyCollapse, GatedDeltaNetEqualsTiedGdr2, ()) {
  const auto spec = *gen_problem(150, 32, 6000);
  expect_collapse(make_members(spec).gdn, [](const auto& h) { return gdr2::gated_deltanet_forward(h); },
                  *rc::gen::inRange<Index>(1, 70));
}

RC_GTEST_PROP(FamilyCollapse, DeltaNetEqualsTiedGdr2, ()) {
  const auto spec = *gen_problem(150, 32, 6000);
  expect_collapse(make_members(spec).deltanet, [](const auto& h) { return gdr2::deltanet_forward(h); },
                  *rc::gen::inRange<Index>(1, 70));
}

RC_GTEST_PROP(FamilyCollapse, GlaEqualsGdr2WithNoErase, ()) {
  const auto spec = *gen_problem(150, 32, 6000);
  expect_collapse(make_members(spec).gla, [](const auto& h) { return gdr2::gla_forward(h); },
                  *rc::gen::inRange<Index>(1, 70));
}

// Negative control: untie the gates (b != w) and the KDA comparison must fail. Shows the collapse tests
// compare something that can differ.
TEST(FamilyCollapse, UntiedGatesAreRejected) {
  ProblemSpec spec;
  spec.seed = 5; spec.T = 20; spec.dk = 6; spec.dv = 5;
  const auto m = make_members(spec);
  auto untied = gdr2::as_gdr2(m.kda);
  untied.w *= mp50(0.5);  // write gate != erase gate
  const double err = relative_error(gdr2::recurrent_forward(untied).o, gdr2::kda_forward(m.kda).o);
  EXPECT_GT(err, 1e-3) << "an untied GDR-2 should not reproduce KDA";
}

TEST(FamilyCollapse, MemberInputsAreValidated) {
  ProblemSpec spec;
  spec.seed = 1; spec.T = 4; spec.dk = 3; spec.dv = 2;
  auto m = make_members(spec);
  m.kda.beta.resize(3);
  try {
    (void)gdr2::kda_forward(m.kda);
    FAIL() << "expected gdr2::invalid_argument";
  } catch (const gdr2::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'beta' has shape 3 x 1, expected 4 x 1"), std::string::npos) << e.what();
  }
}
