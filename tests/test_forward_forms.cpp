// The two forward forms against each other (spec sections 2 and 5): chunkwise == recurrent as an algebraic
// identity (multiprecision), to a stated bound in double, for every chunk size; splitting and carrying the
// state; T = 0; strong decay.
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>
#include <boost/multiprecision/cpp_bin_float.hpp>
#include <boost/multiprecision/eigen.hpp>
#include <gdr2/reference.hpp>
#include "generators.hpp"

using gdr2::Index;
using mp50 = boost::multiprecision::cpp_bin_float_50;
using namespace gdr2_test;

// cpp_bin_float_50 carries 50 decimal digits (unit roundoff ~5e-51). Both forms are exact rearrangements of
// the same rational function of the inputs (derivations/ proves the WY identity), so their difference is
// rounding alone: at most ~ T * C * d * u ~ 300 * 300 * 64 * 5e-51 ~ 3e-45 in the worst case. 1e-40 leaves four
// orders of margin and is still ten orders below anything double could resolve.
constexpr double kMultiprecisionIdentity = 1e-40;

// Double: each form's relative forward error is bounded by a first-order term ~ (T + C) * d * u times the
// conditioning of the contractive steps (|1 - b k.k| <= 1 in the tested regimes); for T, C <= 300, d <= 64 that
// is ~ 600 * 64 * 1.1e-16 = 4e-12. We assert 1e-10 (25x margin); typical measured values are 1e-15.
constexpr double kDoubleForms = 1e-10;

RC_GTEST_PROP(ForwardForms, ChunkwiseEqualsRecurrentMultiprecision, ()) {
  // Work budget: T * d_k * d_v <= 20000 keeps a case under ~1 s in cpp_bin_float_50.
  const auto spec = *gen_problem(300, 64, 20000);
  const Index chunk = *rc::gen::inRange<Index>(1, 130);
  RC_TAG(name(spec.regime));
  const auto h = spec.head().cast<mp50>();
  const auto rec = gdr2::recurrent_forward(h);
  const auto chk = gdr2::chunkwise_forward(h, chunk);
  RC_ASSERT(relative_error(chk.o, rec.o) <= kMultiprecisionIdentity);
  RC_ASSERT(relative_error(chk.s, rec.s) <= kMultiprecisionIdentity);
}

RC_GTEST_PROP(ForwardForms, ChunkwiseEqualsRecurrentDouble, ()) {
  const auto spec = *gen_problem(300, 64, 1 << 30);
  const Index chunk = *rc::gen::element<Index>(1, 2, 3, 16, 63, 64, 65, 100, 300);
  RC_TAG(name(spec.regime));
  const auto h = spec.head();
  const auto rec = gdr2::recurrent_forward(h);
  const auto chk = gdr2::chunkwise_forward(h, chunk);
  RC_ASSERT(relative_error(chk.o, rec.o) <= kDoubleForms);
  RC_ASSERT(relative_error(chk.s, rec.s) <= kDoubleForms);
}

// Every intermediate state of the chunkwise form (Eq. 36, prefix states) equals the recurrent S_t.
RC_GTEST_PROP(ForwardForms, PrefixStatesEqualRecurrentStates, ()) {
  const auto spec = *gen_problem(150, 16, 6000);
  const Index chunk = *rc::gen::inRange<Index>(1, 70);
  const auto h = spec.head().cast<mp50>();
  gdr2::ForwardOptions keep;
  keep.keep_states = true;
  const auto rec = gdr2::recurrent_forward(h, keep);
  const auto chk = gdr2::chunkwise_forward(h, chunk, keep);
  RC_ASSERT(rec.states.size() == static_cast<size_t>(spec.T) + 1);
  RC_ASSERT(chk.states.size() == rec.states.size());
  for (size_t t = 0; t < rec.states.size(); ++t)
    RC_ASSERT(relative_error(chk.states[t], rec.states[t]) <= kMultiprecisionIdentity);
  RC_ASSERT(rec.states.back() == rec.s);
}

namespace {
gdr2::Head<mp50> rows(const gdr2::Head<mp50>& h, Index begin, Index count, const gdr2::Matrix<mp50>& s0) {
  gdr2::Head<mp50> part = h;
  part.q = h.q.middleRows(begin, count); part.k = h.k.middleRows(begin, count);
  part.g = h.g.middleRows(begin, count); part.b = h.b.middleRows(begin, count);
  part.v = h.v.middleRows(begin, count); part.w = h.w.middleRows(begin, count);
  part.s0 = s0;
  return part;
}
}  // namespace

// Running [0, split) then [split, T) from the carried state equals running [0, T) whole.
RC_GTEST_PROP(ForwardForms, SplitAndCarryEqualsWhole, ()) {
  const auto spec = *gen_problem(200, 16, 8000);
  const Index split = *rc::gen::inRange<Index>(0, spec.T + 1);
  const Index chunk = *rc::gen::inRange<Index>(1, 70);
  const auto h = spec.head().cast<mp50>();
  const auto whole = gdr2::chunkwise_forward(h, chunk);
  const auto first = gdr2::chunkwise_forward(rows(h, 0, split, h.s0), chunk);
  const auto second = gdr2::chunkwise_forward(rows(h, split, spec.T - split, first.s), chunk);
  gdr2::Matrix<mp50> o(spec.T, spec.dv);
  o << first.o, second.o;
  RC_ASSERT(relative_error(o, whole.o) <= kMultiprecisionIdentity);
  RC_ASSERT(relative_error(second.s, whole.s) <= kMultiprecisionIdentity);
  // The recurrent form performs the same operations either way: bitwise equal.
  const auto rec_first = gdr2::recurrent_forward(rows(h, 0, split, h.s0));
  const auto rec_second = gdr2::recurrent_forward(rows(h, split, spec.T - split, rec_first.s));
  RC_ASSERT(rec_second.s == gdr2::recurrent_forward(h).s);
}

TEST(ForwardForms, EmptySequenceReturnsInitialState) {
  const auto h = random_head(3, 0, 5, 7);
  for (Index chunk : {1, 64}) {
    const auto f = gdr2::chunkwise_forward(h, chunk);
    EXPECT_EQ(f.o.rows(), 0);
    EXPECT_EQ(f.o.cols(), 7);
    EXPECT_EQ(f.s, h.s0);
  }
  const auto r = gdr2::recurrent_forward(h);
  EXPECT_EQ(r.o.rows(), 0);
  EXPECT_EQ(r.s, h.s0);
}

// Strong decay: g = -50 in every channel of every token, so the cumulative decay of a 64-chunk is exp(-3200),
// far below the smallest double (~1e-308). A form that built exp(-G) would produce inf * 0 = nan here.
TEST(ForwardForms, StrongDecayStaysFiniteAndCorrect) {
  auto h = random_head(11, 300, 32, 24, Gates::typical);
  h.g.setConstant(-50.0);
  h.g.row(77).setZero();  // one token without decay inside a chunk
  const auto rec = gdr2::recurrent_forward(h);
  for (Index chunk : {16, 64, 300}) {
    const auto chk = gdr2::chunkwise_forward(h, chunk);
    ASSERT_TRUE(chk.o.allFinite()) << "chunk " << chunk;
    ASSERT_TRUE(chk.s.allFinite()) << "chunk " << chunk;
    EXPECT_LE(relative_error(chk.o, rec.o), kDoubleForms) << "chunk " << chunk;
    EXPECT_LE(relative_error(chk.s, rec.s), kDoubleForms) << "chunk " << chunk;
  }
  // With every token decaying by exp(-50), S_t depends only on token t: S_t = k_t (w_t * v_t - 0)^T up to
  // exp(-50) ~ 2e-22 of the previous state (the read of the decayed state is ~2e-22 as well).
  const gdr2::Index t = 150;
  gdr2::Matrix<double> expected = h.k.row(t).transpose() * h.w.row(t).cwiseProduct(h.v.row(t));
  gdr2::ForwardOptions keep;
  keep.keep_states = true;
  const auto states = gdr2::recurrent_forward(h, keep).states;
  EXPECT_LE(relative_error(states[t + 1], expected), 1e-20);
}

// The decay applies before the edit (spec section 2): swapping the order changes the answer, so the
// chunkwise/recurrent agreement above is not an agreement of two forms that are both wrong the same way.
TEST(ForwardForms, DecayBeforeEditMatchesHandComputedStep) {
  auto h = gdr2::Head<double>::zeros(1, 2, 1);
  h.s0 << 1.0, 2.0;
  h.k << 1.0, 0.0;
  h.q << 1.0, 1.0;
  h.g << std::log(0.5), std::log(0.25);
  h.b << 0.5, 1.0;
  h.v << 3.0;
  h.w << 0.5;
  h.scale = 1.0;
  // Sbar = [0.5, 0.5]; e = [0.5, 0]; r = 0.25; z = 1.5; S = Sbar + k (z - r) = [1.75, 0.5]; o = 2.25.
  for (const auto& f : {gdr2::recurrent_forward(h), gdr2::chunkwise_forward(h, 1)}) {
    EXPECT_DOUBLE_EQ(f.s(0, 0), 1.75);
    EXPECT_DOUBLE_EQ(f.s(1, 0), 0.5);
    EXPECT_DOUBLE_EQ(f.o(0, 0), 2.25);
  }
}
