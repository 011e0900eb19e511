// Batched API on the ecosystem layout (spec section 1): grouped value heads, packed variable-length
// sequences, OpenMP over (sequence, head). Batched results equal per-head results exactly (same code, same
// operations), and every bad input is rejected with a message naming the tensor.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>
#include <gdr2/reference.hpp>
#include "generators.hpp"

using gdr2::Index;
using namespace gdr2_test;
using ::testing::HasSubstr;

namespace {

// Gathers the per-head answer of (sequence n, value head hv) from the batched output.
void expect_batched_equals_per_head(const gdr2::Batch<double>& x, gdr2::Form form) {
  const auto batched = gdr2::batched_forward(x, form, 16);
  for (Index n = 0; n < x.num_sequences(); ++n)
    for (Index hv = 0; hv < x.HV; ++hv) {
      const auto head = gdr2::extract_head(x, n, hv);
      const auto f = form == gdr2::Form::recurrent ? gdr2::recurrent_forward(head) : gdr2::chunkwise_forward(head, 16);
      const Index begin = x.seq_begin(n);
      for (Index t = 0; t < head.T(); ++t)
        for (Index d = 0; d < x.V; ++d)
          RC_ASSERT(batched.o[static_cast<size_t>(((begin + t) * x.HV + hv) * x.V + d)] == f.o(t, d));
      for (Index i = 0; i < x.K; ++i)
        for (Index j = 0; j < x.V; ++j)
          RC_ASSERT(batched.ht[static_cast<size_t>(((n * x.HV + hv) * x.K + i) * x.V + j)] == f.s(i, j));
    }
}

gdr2::Batch<double> small_batch() { return random_batch(1, 2, 5, 2, 4, 3, 2); }

std::string error_of(const gdr2::Batch<double>& x) {
  try {
    (void)gdr2::batched_forward(x);
  } catch (const gdr2::invalid_argument& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

RC_GTEST_PROP(Batched, GroupedValueHeadsEqualPerHead, ()) {
  const Index H = *rc::gen::inRange<Index>(1, 4), group = *rc::gen::inRange<Index>(1, 4);
  const Index B = *rc::gen::inRange<Index>(1, 4), T = *rc::gen::inRange<Index>(0, 40);
  const Index K = *rc::gen::inRange<Index>(1, 9), V = *rc::gen::inRange<Index>(1, 9);
  const auto x = random_batch(*rc::gen::arbitrary<std::uint64_t>(), B, T, H, H * group, K, V,
                              Gates::typical, *rc::gen::arbitrary<bool>());
  expect_batched_equals_per_head(x, gdr2::Form::recurrent);
  expect_batched_equals_per_head(x, gdr2::Form::chunkwise);
}

RC_GTEST_PROP(Batched, VariableLengthEqualsPerSequence, ()) {
  const auto lengths = *rc::gen::container<std::vector<Index>>(*rc::gen::inRange<std::size_t>(1, 5),
                                                               rc::gen::inRange<Index>(0, 40));
  const auto x = random_batch(*rc::gen::arbitrary<std::uint64_t>(), 1, 0, 2, 4, 5, 3, Gates::strong_decay,
                              *rc::gen::arbitrary<bool>(), lengths);
  expect_batched_equals_per_head(x, gdr2::Form::recurrent);
  expect_batched_equals_per_head(x, gdr2::Form::chunkwise);
}

// Grouped value heads read their key head: value heads 0,1 -> key head 0; 2,3 -> key head 1 (HV/H = 2).
TEST(Batched, ValueHeadReadsItsGroupsKeyHead) {
  auto x = small_batch();
  EXPECT_EQ(x.key_head(0), 0);
  EXPECT_EQ(x.key_head(1), 0);
  EXPECT_EQ(x.key_head(2), 1);
  EXPECT_EQ(x.key_head(3), 1);
  const auto head = gdr2::extract_head(x, 1, 3);
  EXPECT_EQ(head.q(2, 1), x.q[static_cast<size_t>(((1 * x.T + 2) * x.H + 1) * x.K + 1)]);
  EXPECT_EQ(head.v(2, 1), x.v[static_cast<size_t>(((1 * x.T + 2) * x.HV + 3) * x.V + 1)]);
}

TEST(Batched, ResultsDoNotDependOnThreadCount) {
  const auto x = random_batch(4, 3, 33, 2, 4, 8, 8);
  const auto a = gdr2::batched_forward(x, gdr2::Form::chunkwise, 8);
  const auto b = gdr2::batched_forward(x, gdr2::Form::chunkwise, 8);
  EXPECT_EQ(a.o, b.o);
  EXPECT_EQ(a.ht, b.ht);
}

TEST(BadInput, TensorSizeMismatchNamesTensorAndLayout) {
  auto x = small_batch();
  x.v.pop_back();
  EXPECT_THAT(error_of(x), HasSubstr("tensor 'v' has 79 elements, expected 80 ([B, T, HV, V] = [2, 5, 4, 2])"));
}

TEST(BadInput, ValueHeadsMustBeAMultipleOfKeyHeads) {
  auto x = random_batch(1, 1, 3, 2, 3, 2, 2);
  EXPECT_THAT(error_of(x), HasSubstr("HV (value heads) must be a multiple of H (key heads), got HV = 3, H = 2"));
}

TEST(BadInput, NonPositiveDimensions) {
  auto x = small_batch();
  x.K = 0;
  EXPECT_THAT(error_of(x), HasSubstr("K must be >= 1, got 0"));
  auto y = small_batch();
  y.B = -1;
  EXPECT_THAT(error_of(y), HasSubstr("B must be >= 1, got -1"));
  auto z = small_batch();
  z.T = -2;
  EXPECT_THAT(error_of(z), HasSubstr("T must be >= 0, got -2"));
}

TEST(BadInput, CuSeqlensChecked) {
  auto x = random_batch(2, 1, 0, 1, 1, 2, 2, Gates::typical, true, {3, 4});
  auto decreasing = x;
  decreasing.cu_seqlens = {0, 5, 3, 7};
  decreasing.h0.resize(3 * 4);
  EXPECT_THAT(error_of(decreasing), HasSubstr("cu_seqlens must be non-decreasing, but cu_seqlens[2] = 3 < cu_seqlens[1] = 5"));
  auto short_end = x;
  short_end.cu_seqlens = {0, 3, 6};
  EXPECT_THAT(error_of(short_end), HasSubstr("cu_seqlens must end at T = 7, got 6"));
  auto bad_start = x;
  bad_start.cu_seqlens = {1, 3, 7};
  EXPECT_THAT(error_of(bad_start), HasSubstr("cu_seqlens[0] must be 0, got 1"));
  auto two_batches = x;
  two_batches.B = 2;
  EXPECT_THAT(error_of(two_batches), HasSubstr("cu_seqlens given, so B must be 1, got B = 2"));
  auto wrong_h0 = x;
  wrong_h0.h0.resize(4);
  EXPECT_THAT(error_of(wrong_h0), HasSubstr("tensor 'h0' has 4 elements, expected 8 ([N, HV, K, V] = [2, 1, 2, 2])"));
}

TEST(BadInput, NonFiniteValueNamedWithIndex) {
  auto x = small_batch();
  x.g[static_cast<size_t>(((1 * x.T + 3) * x.H + 1) * x.K + 2)] = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THAT(error_of(x), HasSubstr("tensor 'g' has a non-finite value nan at [1, 3, 1, 2] of [B, T, H, K]"));
  auto y = small_batch();
  y.h0[5] = std::numeric_limits<double>::infinity();
  EXPECT_THAT(error_of(y), HasSubstr("tensor 'h0' has a non-finite value inf at [0, 0, 2, 1] of [N, HV, K, V]"));
  auto z = small_batch();
  z.scale = std::numeric_limits<double>::infinity();
  EXPECT_THAT(error_of(z), HasSubstr("'scale' is not finite: inf"));
}

TEST(BadInput, PerHeadShapesAndValues) {
  auto h = random_head(1, 6, 4, 3);
  auto expect_error = [](const gdr2::Head<double>& bad, const std::string& text) {
    for (int form = 0; form < 2; ++form) {
      try {
        if (form == 0) (void)gdr2::recurrent_forward(bad);
        else (void)gdr2::chunkwise_forward(bad, 4);
        ADD_FAILURE() << "expected an error containing: " << text;
      } catch (const gdr2::invalid_argument& e) {
        EXPECT_THAT(e.what(), HasSubstr(text));
      }
    }
  };
  auto a = h; a.k.resize(5, 4);
  expect_error(a, "tensor 'k' has shape 5 x 4, expected 6 x 4 (T x d_k, T and d_k from q)");
  auto b = h; b.w.resize(6, 2);
  expect_error(b, "tensor 'w' has shape 6 x 2, expected 6 x 3");
  auto c = h; c.s0.resize(3, 4);
  expect_error(c, "tensor 's0' has shape 3 x 4, expected 4 x 3 (d_k x d_v");
  auto d = h; d.b(2, 1) = -std::numeric_limits<double>::infinity();
  expect_error(d, "tensor 'b' has a non-finite value -inf at [2, 1]");
  auto e = h; e.q.resize(6, 0); e.k.resize(6, 0); e.g.resize(6, 0); e.b.resize(6, 0); e.s0.resize(0, 3);
  expect_error(e, "d_k (columns of q) must be >= 1, got 0");
  try {
    (void)gdr2::chunkwise_forward(h, 0);
    ADD_FAILURE() << "chunk_size 0 accepted";
  } catch (const gdr2::invalid_argument& err) {
    EXPECT_THAT(err.what(), HasSubstr("chunk_size must be >= 1, got 0"));
  }
}
