// gdr2-verify building blocks: safetensors round trips (every dtype, bit-exact), malformed files rejected with
// a clear message, handshake parsing, case generation and rounding, the oracle's tolerances and the Eq. 48
// collapse on the reference itself.
#include <gtest/gtest.h>
#include <filesystem>
#include <fstream>
#include <rapidcheck/gtest.h>
#include "case.hpp"
#include "oracle.hpp"
#include "port_client.hpp"
#include "properties.hpp"
#include "target.hpp"
#include "safetensors.hpp"

using namespace gdr2v;

namespace {
std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("gdr2-verify-test-" + std::to_string(getpid()) + "-" + name)).string();
}
}  // namespace

TEST(VerifySafetensors, RoundTripIsBitExactForEveryDtype) {
  SafeTensors f;
  const std::vector<double> values{0.0, -1.5, 3.140625, 1e-3, -65504.0, 0.333251953125};
  for (DType d : {DType::f64, DType::f32, DType::bf16, DType::f16}) {
    std::vector<double> rounded;
    for (double v : values) rounded.push_back(round_to(d, v));
    f.tensors[short_name(d)] = Tensor::from_double(d, {2, 3}, rounded);
  }
  f.tensors["offsets"] = Tensor::from_double(DType::i64, {3}, {0, 5, 9});
  f.metadata["scale"] = "0.125";
  const auto path = temp_path("roundtrip.safetensors");
  f.save(path);
  const SafeTensors g = SafeTensors::load(path);
  std::filesystem::remove(path);
  EXPECT_EQ(g.meta("scale"), "0.125");
  for (DType d : {DType::f64, DType::f32, DType::bf16, DType::f16}) {
    const Tensor& t = g.at(short_name(d));
    EXPECT_EQ(t.dtype, d);
    EXPECT_EQ(t.shape, (std::vector<std::int64_t>{2, 3}));
    EXPECT_EQ(t.bytes, f.tensors.at(short_name(d)).bytes) << short_name(d);
    const auto back = t.to_double();
    for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(back[i], round_to(d, values[i]));
  }
  EXPECT_EQ(g.at("offsets").to_double(), (std::vector<double>{0, 5, 9}));
}

TEST(VerifySafetensors, KnownBitPatterns) {
  // 1.0 is 0x3F80 in bfloat16 and 0x3C00 in half; -2.0 is 0xC000 in both.
  const Tensor b = Tensor::from_double(DType::bf16, {2}, {1.0, -2.0});
  const Tensor h = Tensor::from_double(DType::f16, {2}, {1.0, -2.0});
  EXPECT_EQ(b.bytes, (std::vector<std::uint8_t>{0x80, 0x3F, 0x00, 0xC0}));
  EXPECT_EQ(h.bytes, (std::vector<std::uint8_t>{0x00, 0x3C, 0x00, 0xC0}));
}

TEST(VerifySafetensors, MalformedFilesGiveClearErrors) {
  const auto path = temp_path("bad.safetensors");
  auto write = [&](const std::string& bytes) { std::ofstream(path, std::ios::binary) << bytes; };
  auto expect_error = [&](const std::string& needle) {
    try {
      SafeTensors::load(path);
      ADD_FAILURE() << "no error, expected one mentioning '" << needle << "'";
    } catch (const format_error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  write("abc");
  expect_error("too short");
  std::string header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})";
  std::string len(8, '\0');
  len[0] = static_cast<char>(header.size());
  write(len + header + std::string(4, '\0'));
  expect_error("needs 8");
  header = R"({"x":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}})";
  len[0] = static_cast<char>(header.size());
  write(len + header + std::string(4, '\0'));
  expect_error("unsupported safetensors dtype 'Q7'");
  write(len + "not json at all, not json at all, not json at all, not json");
  expect_error("not JSON");
  std::filesystem::remove(path);
  SafeTensors empty;
  try {
    empty.at("o");
    ADD_FAILURE();
  } catch (const format_error& e) {
    EXPECT_NE(std::string(e.what()).find("missing tensor 'o'"), std::string::npos);
  }
}

TEST(VerifyHandshake, ParsesCapabilitiesAndRejectsBadLines) {
  const Capabilities c = parse_handshake("gdr2-port 1 dtypes=bf16,f32 grad=1 varlen=0 gva=1 max_dk=128 max_dv=64 state=VK future=7");
  EXPECT_EQ(c.dtypes, (std::vector<DType>{DType::bf16, DType::f32}));
  EXPECT_TRUE(c.grad);
  EXPECT_FALSE(c.varlen);
  EXPECT_TRUE(c.gva);
  EXPECT_EQ(c.max_k, 128);
  EXPECT_EQ(c.max_v, 64);
  EXPECT_TRUE(c.state_vk);
  const Capabilities d = parse_handshake("gdr2-port 1");
  EXPECT_EQ(d.dtypes, (std::vector<DType>{DType::f32}));
  EXPECT_FALSE(d.grad);
  for (const char* bad : {"hello", "gdr2-port 2", "gdr2-port 1 grad=yes", "gdr2-port 1 dtypes=f8", "gdr2-port 1 max_dk=-3",
                          "gdr2-port 1 state=KK", "gdr2-port 1 nonsense"})
    EXPECT_THROW(parse_handshake(bad), target_error) << bad;
}

TEST(VerifyCase, FilesRoundTripAndShapesAreChecked) {
  CaseSpec spec;
  spec.seed = 3; spec.T = 5; spec.H = 2; spec.group = 2; spec.K = 16; spec.V = 32; spec.want_grad = true;
  spec.lengths = {2, 0, 3};
  const Case c = round_inputs(make_case(spec), DType::bf16);
  EXPECT_EQ(c.x.cu_seqlens, (std::vector<std::int64_t>{0, 2, 2, 5}));
  const SafeTensors f = input_file(c, DType::bf16, false);
  EXPECT_EQ(f.at("q").dtype, DType::bf16);
  EXPECT_EQ(f.at("g").dtype, DType::f32);
  EXPECT_EQ(f.at("h0").shape, (std::vector<std::int64_t>{3, 4, 16, 32}));
  const Case back = case_from_file(f);
  EXPECT_EQ(back.x.q, c.x.q);  // rounding happened once, so the file holds exactly the case
  EXPECT_EQ(back.x.g, c.x.g);
  EXPECT_EQ(back.x.h0, c.x.h0);
  EXPECT_EQ(back.dout, c.dout);
  EXPECT_EQ(back.x.scale, c.x.scale);
  // An output file with a wrong shape names the tensor and both shapes.
  SafeTensors out;
  out.tensors["o"] = Tensor::from_double(DType::f32, {1, 6, 4, 32}, std::vector<double>(6 * 4 * 32, 0.0));
  try {
    read_output_file(out, c, false);
    ADD_FAILURE();
  } catch (const format_error& e) {
    EXPECT_NE(std::string(e.what()).find("'o' has shape [1, 6, 4, 32], expected [1, 5, 4, 32]"), std::string::npos) << e.what();
  }
}

TEST(VerifyCase, TiedCasesAreTied) {
  CaseSpec spec;
  spec.seed = 11; spec.T = 7; spec.H = 2; spec.group = 2; spec.K = 16; spec.V = 16; spec.tie = Tie::gated_deltanet;
  const Case c = make_case(spec);
  for (Index bt = 0; bt < c.x.T; ++bt)
    for (Index hv = 0; hv < c.x.HV; ++hv) {
      const Index h = hv / 2;
      const double beta = c.x.b[static_cast<size_t>((bt * c.x.H + h) * c.x.K)];
      const double a = c.x.g[static_cast<size_t>((bt * c.x.H + h) * c.x.K)];
      for (Index d = 0; d < c.x.K; ++d) {
        EXPECT_EQ(c.x.b[static_cast<size_t>((bt * c.x.H + h) * c.x.K + d)], beta);
        EXPECT_EQ(c.x.g[static_cast<size_t>((bt * c.x.H + h) * c.x.K + d)], a);
      }
      for (Index d = 0; d < c.x.V; ++d) EXPECT_EQ(c.x.w[static_cast<size_t>((bt * c.x.HV + hv) * c.x.V + d)], beta);
    }
}

// The independent KDA reference (gdr2/family.hpp) equals the GDR-2 reference on tied cases to double accuracy,
// and the collapse check rejects an untied case (the check can fail).
RC_GTEST_PROP(VerifyOracle, TiedReferenceMatchesGdr2InDouble, ()) {
  CaseSpec spec;
  spec.seed = *rc::gen::arbitrary<std::uint64_t>();
  spec.T = *rc::gen::inRange(0, 80);
  spec.H = *rc::gen::inRange(1, 3);
  spec.group = *rc::gen::inRange(1, 3);
  spec.tie = *rc::gen::element(Tie::kda, Tie::gated_deltanet);
  const Case c = make_case(spec);
  const auto tied = tied_reference(spec.tie, c);
  const auto ref = reference_double(c);
  // Two double evaluations of the same recurrence in different orders: ~1e-15 relative; 1e-12 is generous.
  RC_ASSERT(relative_error(tied.forward.o, ref.o) < 1e-12);
  RC_ASSERT(relative_error(tied.forward.ht, ref.ht) < 1e-12);
}

TEST(VerifyOracle, CollapseCheckCanFail) {
  CaseSpec spec;
  spec.seed = 5; spec.T = 20; spec.tie = Tie::none;  // untied gates: KDA must disagree
  const Case c = make_case(spec);
  EXPECT_GT(relative_error(tied_reference(Tie::kda, c).forward.o, reference_double(c).o), 1e-3);
}

TEST(VerifyOracle, BaselineOrderingFollowsPrecision) {
  CaseSpec spec;
  spec.seed = 9; spec.T = 100; spec.K = 32; spec.V = 32;
  const Case c = round_inputs(make_case(spec), DType::f32);
  const auto ref = reference_double(c);
  const double e32 = relative_error(baselines(Contract::fp32, c)[0].o, ref.o);
  const double e16 = relative_error(baselines(Contract::fp16, c)[0].o, ref.o);
  const double ebf = relative_error(baselines(Contract::bf16, c)[0].o, ref.o);
  // Unit roundoffs 2^-24 < 2^-11 < 2^-8: the measured baselines keep that order, each within 100 u of its format.
  EXPECT_LT(e32, e16);
  EXPECT_LT(e16, ebf);
  EXPECT_LT(e32, 100 * 0x1p-24);
  EXPECT_LT(ebf, 100 * 0x1p-8);
  EXPECT_GT(e32, 0.0);
}

TEST(VerifyOracle, RelativeErrorFlagsNonFiniteAndSizeMismatch) {
  EXPECT_TRUE(std::isinf(relative_error({1.0, NAN}, {1.0, 1.0})));
  EXPECT_TRUE(std::isinf(relative_error({1.0}, {1.0, 1.0})));
  EXPECT_DOUBLE_EQ(relative_error({3.0, 4.0}, {0.0, 0.0}), 5.0);
  EXPECT_DOUBLE_EQ(relative_error({1.0, 1.0}, {1.0, 1.0}), 0.0);
}

namespace {
// A target that returns the double reference with o and ht scaled by 1.5: wrong by 50% in every case.
struct ScaledReferenceTarget : Target {
  std::string name() const override { return "scaled-reference"; }
  std::string description() const override { return "the double reference, o and ht times 1.5"; }
  Capabilities capabilities() const override { return {}; }
  Contract default_contract() const override { return Contract::fp16; }
  Outputs run(const Case& c, DType, const std::string&) override {
    Outputs out = reference_double(c);
    for (auto& x : out.o) x *= 1.5;
    for (auto& x : out.ht) x *= 1.5;
    return out;
  }
};
}  // namespace

// A case whose reference overflows in half (|S| reaches 5 x 30000 > 65504) gives infinite baselines. They must not
// widen the bound to infinity: the floor alone bounds the target then, and a 50% error fails.
TEST(VerifyOracle, OverflowingBaselineGivesNoFreePass) {
  Case c;
  c.x = gdr2::Batch<double>::zeros(1, 5, 1, 1, 16, 16, false);
  for (Index t = 0; t < 5; ++t) {
    c.x.q[static_cast<size_t>(t * 16)] = 1.0;  // q = k = e_0, g = 0, b = 0 (nothing erased), w = 1, v = 3e4
    c.x.k[static_cast<size_t>(t * 16)] = 1.0;
    for (Index j = 0; j < 16; ++j) {
      c.x.v[static_cast<size_t>(t * 16 + j)] = 3e4;
      c.x.w[static_cast<size_t>(t * 16 + j)] = 1.0;
    }
  }
  c.x.scale = 1.0;
  ASSERT_FALSE(std::isfinite(relative_error(baselines(Contract::fp16, c)[2].ht, reference_double(c).ht)))
      << "the case must overflow the half-precision reference for this test to mean anything";
  ScaledReferenceTarget target;
  const Evaluation e = evaluate(target, Property::forward, Contract::fp16, c, 0, "overflow case");
  EXPECT_FALSE(e.pass) << e.message;
  EXPECT_NE(e.message.find("ht: err"), std::string::npos) << e.message;
}

// The collapse-to-Gated-DeltaNet gradients: Eq. 48's dbeta and the scalar-decay reduction sum_i dg_t[i] of the
// GDR-2 reference backward equal the independent token-by-token KDA/GDN backward of the oracle (two double
// evaluations in different orders: ~1e-15; 1e-11 leaves room for cancellation), grouped value heads included;
// and a gradient with one decay channel dropped is rejected (the check can fail).
TEST(VerifyOracle, GatedDeltaNetGradientsByEq48AndScalarDecay) {
  CaseSpec spec;
  spec.seed = 13; spec.T = 37; spec.H = 2; spec.group = 2; spec.K = 16; spec.V = 32;
  spec.tie = Tie::gated_deltanet; spec.want_grad = true;
  const Case c = make_case(spec);
  const Outputs ref = reference_double(c);
  ASSERT_TRUE(ref.has_grad);
  const TiedReference tied = tied_reference(Tie::gated_deltanet, c);
  EXPECT_LT(relative_error(dbeta_eq48(c, ref), tied.dbeta), 1e-11);
  EXPECT_LT(relative_error(dlog_decay_sum(c, ref), tied.dlog_decay), 1e-11);
  Outputs wrong = ref;
  for (size_t i = 0; i < wrong.dg.size(); i += static_cast<size_t>(c.x.K)) wrong.dg[i] = 0;  // channel 0 dropped
  EXPECT_GT(relative_error(dlog_decay_sum(c, wrong), tied.dlog_decay), 1e-3);
}
