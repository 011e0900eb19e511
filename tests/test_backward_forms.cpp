// The two backward forms against each other (spec section 6): the chunkwise gate-aware VJPs equal the
// token-by-token VJPs as an algebraic identity (1e-40 in cpp_bin_float_50), within a stated bound in double,
// stay finite and correct under strong decay and at the gate edges; the batched backward sums GVA groups.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>
#include <boost/multiprecision/cpp_bin_float.hpp>
#include <boost/multiprecision/eigen.hpp>
#include <gdr2/backward.hpp>
#include "generators.hpp"

using gdr2::Index;
using mp50 = boost::multiprecision::cpp_bin_float_50;
using namespace gdr2_test;

// Same margin argument as test_forward_forms.cpp: rounding of two orders of the same exact sums in 50 digits,
// ~ T * C * d * 5e-51 <= 1e-45 here, asserted at 1e-40.
constexpr double kMultiprecisionIdentity = 1e-40;
// Double: the backward's first-order error bound has the forward's form, (T + C) * d * u ~ 4e-12 for T, C <= 300,
// d <= 64, times the conditioning of the contractive steps; asserted at 1e-9 (the backward reads forward states
// that carry their own error; measured values are ~1e-15).
constexpr double kDoubleForms = 1e-9;

namespace {
template <class S>
double worst(const gdr2::Gradients<S>& a, const gdr2::Gradients<S>& b) {
  double e = 0;
  const auto na = gdr2::named_tensors(a), nb = gdr2::named_tensors(b);
  for (size_t t = 0; t < na.size(); ++t) e = std::max(e, relative_error(*na[t].second, *nb[t].second));
  return e;
}
}  // namespace

RC_GTEST_PROP(BackwardForms, ChunkwiseEqualsRecurrentMultiprecision, ()) {
  // Shapes include T < chunk and T not a multiple of the chunk; work budget keeps a case < 1 s.
  const auto spec = *gen_problem(100, 16, 2500);
  const Index chunk = *rc::gen::inRange<Index>(1, 40);
  RC_TAG(name(spec.regime));
  const auto h = spec.head().cast<mp50>();
  const auto up = random_upstream(spec.seed, spec.T, spec.dk, spec.dv);
  const auto dout = gdr2::cast_matrix<mp50>(up.dout), dsf = gdr2::cast_matrix<mp50>(up.ds_final);
  RC_ASSERT(worst(gdr2::chunkwise_backward(h, dout, dsf, chunk), gdr2::recurrent_backward(h, dout, dsf)) <=
            kMultiprecisionIdentity);
}

RC_GTEST_PROP(BackwardForms, ChunkwiseEqualsRecurrentDouble, ()) {
  const auto spec = *gen_problem(300, 64, 300000);
  const Index chunk = *rc::gen::element<Index>(1, 7, 16, 63, 64, 65, 300);
  RC_TAG(name(spec.regime));
  const auto h = spec.head();
  const auto up = random_upstream(spec.seed, spec.T, spec.dk, spec.dv);
  RC_ASSERT(worst(gdr2::chunkwise_backward(h, up.dout, up.ds_final, chunk),
                  gdr2::recurrent_backward(h, up.dout, up.ds_final)) <= kDoubleForms);
}

// g = -50 in every channel: a 64-chunk's cumulative decay is exp(-3200) (0 in double). Both forms must give
// finite gradients that agree, and agree with the multiprecision answer.
TEST(BackwardForms, StrongDecayGradientsFiniteAndCorrect) {
  auto h = random_head(17, 150, 12, 10);
  h.g.setConstant(-50.0);
  h.g.row(40).setZero();
  const auto up = random_upstream(17, 150, 12, 10);
  const auto exact = gdr2::recurrent_backward(h.cast<mp50>(), gdr2::cast_matrix<mp50>(up.dout),
                                              gdr2::cast_matrix<mp50>(up.ds_final)).cast<double>();
  for (Index chunk : {16, 64, 150}) {
    const auto g = gdr2::chunkwise_backward(h, up.dout, up.ds_final, chunk);
    for (const auto& [name, m] : gdr2::named_tensors(g)) ASSERT_TRUE(m->allFinite()) << name << " chunk " << chunk;
    EXPECT_LE(worst(g, exact), kDoubleForms) << "chunk " << chunk;
  }
}

// Gate edges: b = 0 (no erase), w = 0 (no write), b = 2 (full reflection), all mixed in one sequence.
TEST(BackwardForms, GateEdgesAgreeWithMultiprecision) {
  auto h = random_head(23, 70, 8, 6, Gates::gate_edges);
  h.b.row(3).setZero(); h.w.row(3).setZero();
  h.b.row(4).setConstant(2.0);
  const auto up = random_upstream(23, 70, 8, 6);
  const auto exact = gdr2::recurrent_backward(h.cast<mp50>(), gdr2::cast_matrix<mp50>(up.dout),
                                              gdr2::cast_matrix<mp50>(up.ds_final)).cast<double>();
  for (Index chunk : {1, 16, 64}) {
    const auto g = gdr2::chunkwise_backward(h, up.dout, up.ds_final, chunk);
    EXPECT_LE(worst(g, exact), kDoubleForms) << "chunk " << chunk;
  }
  EXPECT_LE(worst(gdr2::recurrent_backward(h, up.dout, up.ds_final), exact), kDoubleForms);
}

TEST(BackwardForms, EmptySequencePassesStateGradientThrough) {
  const auto h = random_head(2, 0, 3, 4);
  const auto up = random_upstream(2, 0, 3, 4);
  for (const auto& g : {gdr2::recurrent_backward(h, up.dout, up.ds_final), gdr2::chunkwise_backward(h, up.dout, up.ds_final)}) {
    EXPECT_EQ(g.dq.rows(), 0);
    EXPECT_EQ(g.ds0, up.ds_final);
  }
}

// Batched backward: per-head backward, shared-key-head gradients summed over the group in value-head order.
RC_GTEST_PROP(BatchedBackward, GroupsAndVarlenEqualPerHeadSums, ()) {
  const Index H = *rc::gen::inRange<Index>(1, 3), group = *rc::gen::inRange<Index>(1, 4);
  const bool varlen = *rc::gen::arbitrary<bool>();
  const auto lengths = varlen ? *rc::gen::container<std::vector<Index>>(*rc::gen::inRange<std::size_t>(1, 4),
                                                                        rc::gen::inRange<Index>(0, 30))
                              : std::vector<Index>{};
  const auto x = random_batch(*rc::gen::arbitrary<std::uint64_t>(), 2, 17, H, H * group, 5, 4, Gates::typical, true, lengths);
  const Index N = x.num_sequences();
  Sampler s(3);
  std::vector<double> dout(x.v.size()), dht(static_cast<size_t>(N * x.HV * x.K * x.V));
  for (auto& e : dout) e = s.normal();
  for (auto& e : dht) e = s.normal();
  const auto form = *rc::gen::element(gdr2::Form::recurrent, gdr2::Form::chunkwise);
  const auto g = gdr2::batched_backward(x, dout, dht, form, 8);
  std::vector<double> dq(x.q.size(), 0.0);
  for (Index n = 0; n < N; ++n)
    for (Index hv = 0; hv < x.HV; ++hv) {
      const auto head = gdr2::extract_head(x, n, hv);
      gdr2::Matrix<double> d_o(head.T(), x.V), d_s(x.K, x.V);
      const Index begin = x.seq_begin(n);
      for (Index t = 0; t < head.T(); ++t)
        for (Index d = 0; d < x.V; ++d) d_o(t, d) = dout[static_cast<size_t>(((begin + t) * x.HV + hv) * x.V + d)];
      for (Index i = 0; i < x.K * x.V; ++i) d_s.data()[i] = dht[static_cast<size_t>((n * x.HV + hv) * x.K * x.V + i)];
      const auto per_head = form == gdr2::Form::recurrent ? gdr2::recurrent_backward(head, d_o, d_s)
                                                          : gdr2::chunkwise_backward(head, d_o, d_s, 8);
      for (Index t = 0; t < head.T(); ++t) {
        for (Index d = 0; d < x.K; ++d)
          dq[static_cast<size_t>(((begin + t) * x.H + x.key_head(hv)) * x.K + d)] += per_head.dq(t, d);
        for (Index d = 0; d < x.V; ++d)
          RC_ASSERT(g.dw[static_cast<size_t>(((begin + t) * x.HV + hv) * x.V + d)] == per_head.dw(t, d));
      }
      for (Index i = 0; i < x.K * x.V; ++i)
        RC_ASSERT(g.dh0[static_cast<size_t>((n * x.HV + hv) * x.K * x.V + i)] == per_head.ds0.data()[i]);
    }
  RC_ASSERT(g.dq == dq);  // same additions in the same order: bitwise equal
}

TEST(BatchedBackward, UpstreamShapesChecked) {
  const auto x = random_batch(1, 1, 4, 1, 2, 3, 2);
  std::vector<double> dout(x.v.size() - 1), dht;
  try {
    (void)gdr2::batched_backward(x, dout, dht);
    FAIL() << "short dout accepted";
  } catch (const gdr2::invalid_argument& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("tensor 'dout' has 15 elements, expected 16 ([B, T, HV, V] = [1, 4, 2, 2])"));
  }
  auto h = random_head(1, 4, 3, 2);
  const auto up = random_upstream(1, 4, 3, 2);
  auto bad = up.ds_final;
  bad(1, 1) = std::numeric_limits<double>::quiet_NaN();
  try {
    (void)gdr2::chunkwise_backward(h, up.dout, bad);
    FAIL() << "nan ds_final accepted";
  } catch (const gdr2::invalid_argument& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("tensor 'ds_final' has a non-finite value nan at [1, 1]"));
  }
}
