// GPU tests of the CUDA forward kernels (recurrent, chunk accurate, chunk fast) against the double
// reference. Without a CUDA device every test reports "skipped: no CUDA device". The CudaApi tests check
// the host-side argument validation and run everywhere (they fail before any CUDA call).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rapidcheck.h>

#include <cstdlib>
#include <iostream>

#include <gdr2/family.hpp>
#include <gdr2/reference.hpp>

#include "cuda_testbed.hpp"
#include "problems.hpp"

namespace {

using gdr2::cuda::DType;
using gdr2_test::Gates;
using namespace gdr2_test::cuda;

#define GDR2_REQUIRE_DEVICE() \
  if (!gdr2::cuda::device_available()) GTEST_SKIP() << "skipped: no CUDA device"

constexpr Kernel kKernels[] = {Kernel::recurrent, Kernel::chunk_accurate, Kernel::chunk_fast};
constexpr DType kDTypes[] = {DType::f32, DType::bf16, DType::f16};

void expect_matches(const gdr2::Batch<double>& batch, DType t, Kernel kernel, const std::string& what) {
  const Comparison c = compare_forward(batch, t, kernel);
  EXPECT_TRUE(c.passes()) << what << " [" << kernel_label(kernel) << ", " << dtype_label(t) << "]: " << c.describe();
}


// ---- accuracy on the ecosystem layout ------------------------------------------------------------------

TEST(CudaForward, MatchesReferenceEveryDtype) {
  GDR2_REQUIRE_DEVICE();
  // GVA (HV = 2 H), T not a multiple of 64, random initial state, K != V.
  const auto batch = gdr2_test::random_batch(11, 2, 150, 2, 4, 64, 48, Gates::typical, true);
  for (Kernel kernel : kKernels)
    for (DType t : kDTypes) expect_matches(batch, t, kernel, "B=2 T=150 H=2 HV=4 K=64 V=48");
}

TEST(CudaForward, AccurateModeBelow1e5OnTypicalInputs) {
  GDR2_REQUIRE_DEVICE();
  // Issue 4: fp32 inputs, spec section 8's regime, relative error < 1e-5 against the double reference.
  const auto batch = gdr2_test::random_batch(12, 2, 300, 2, 2, 128, 128, Gates::typical, true);
  for (Kernel kernel : {Kernel::recurrent, Kernel::chunk_accurate}) {
    const Comparison c = compare_forward(batch, DType::f32, kernel);
    EXPECT_LT(c.err_o, 1e-5) << kernel_label(kernel) << ": " << c.describe();
    EXPECT_LT(c.err_ht, 1e-5) << kernel_label(kernel) << ": " << c.describe();
    EXPECT_TRUE(c.passes()) << kernel_label(kernel) << ": " << c.describe();
  }
}

TEST(CudaForward, EveryGateRegime) {
  GDR2_REQUIRE_DEVICE();
  // strong_decay has g down to -50 (G_r - G_s to -3200 inside a chunk); gate_edges has b = 0, 2 and w = 0.
  for (Gates regime : gdr2_test::kAllGates) {
    const auto batch = gdr2_test::random_batch(20 + static_cast<int>(regime), 1, 140, 2, 2, 32, 32, regime, true);
    for (Kernel kernel : kKernels) expect_matches(batch, DType::f32, kernel, gdr2_test::name(regime));
    expect_matches(batch, DType::bf16, Kernel::chunk_fast, gdr2_test::name(regime));
  }
}

TEST(CudaForward, StrongDecayStaysFinite) {
  GDR2_REQUIRE_DEVICE();
  // Every token g = -50 on every channel: exp(-G) would be exp(3200) inside one chunk.
  auto batch = gdr2_test::random_batch(30, 1, 128, 1, 1, 64, 64, Gates::typical, true);
  for (auto& e : batch.g) e = -50.0;
  for (Kernel kernel : kKernels) expect_matches(batch, DType::f32, kernel, "g = -50 everywhere");
}

TEST(CudaForward, VariableLengthSequences) {
  GDR2_REQUIRE_DEVICE();
  // Packed sequences: empty, one token, exactly one chunk, chunk + 1, several chunks, odd tail.
  const std::vector<gdr2::Index> lengths{1, 64, 0, 65, 130, 7};
  const auto batch = gdr2_test::random_batch(40, 1, 0, 2, 4, 32, 40, Gates::typical, true, lengths);
  for (Kernel kernel : kKernels)
    for (DType t : {DType::f32, DType::bf16}) expect_matches(batch, t, kernel, "varlen {1,64,0,65,130,7}");
}

TEST(CudaForward, ZeroInitialStateAndNoFinalState) {
  GDR2_REQUIRE_DEVICE();
  const auto batch = gdr2_test::random_batch(50, 2, 70, 1, 1, 16, 16, Gates::typical, false);
  for (Kernel kernel : kKernels) {
    expect_matches(batch, DType::f32, kernel, "h0 = nullptr");
    // ht = nullptr: o is still right and nothing else is written.
    const auto rounded = rounded_for_device(batch, DType::f32);
    const auto ref = gdr2::batched_forward(rounded, gdr2::Form::recurrent);
    DeviceBatch d = to_device(batch, DType::f32);
    auto x = d.forward_tensors();
    x.ht = nullptr;
    launch(kernel, d.problem, x);
    const Comparison c = calibrate(rounded, ref, DType::f32, kernel);
    EXPECT_LE(relative_error(d.output(), ref.o), c.tol_o) << kernel_label(kernel);
    for (double e : d.final_state()) ASSERT_TRUE(std::isnan(e)) << "ht was written although it is nullptr";
  }
}

TEST(CudaForward, OddShapes) {
  GDR2_REQUIRE_DEVICE();
  struct Shape { int T, K, V; };
  for (Shape s : {Shape{1, 1, 1}, Shape{63, 7, 5}, Shape{64, 100, 33}, Shape{129, 256, 80}, Shape{65, 130, 256}}) {
    const auto batch = gdr2_test::random_batch(60 + s.T, 1, s.T, 1, 1, s.K, s.V, Gates::typical, true);
    for (Kernel kernel : kKernels)
      expect_matches(batch, DType::f32, kernel,
                     "T=" + std::to_string(s.T) + " K=" + std::to_string(s.K) + " V=" + std::to_string(s.V));
  }
}

TEST(CudaForward, EmptySequenceCopiesTheState) {
  GDR2_REQUIRE_DEVICE();
  const auto batch = gdr2_test::random_batch(70, 2, 0, 1, 2, 8, 8, Gates::typical, true);
  for (Kernel kernel : kKernels) {
    DeviceBatch d = to_device(batch, DType::f32);
    launch(kernel, d.problem, d.forward_tensors());
    const auto ht = d.final_state();
    ASSERT_EQ(ht.size(), batch.h0.size());
    for (std::size_t i = 0; i < ht.size(); ++i)
      ASSERT_EQ(ht[i], static_cast<double>(static_cast<float>(batch.h0[i]))) << kernel_label(kernel);
  }
}

TEST(CudaForward, EveryStateTileWidth) {
  GDR2_REQUIRE_DEVICE();
  // The chunk kernel picks the V tile of its state recurrence (16, 32 or 64 columns) from the grid size;
  // small test problems would only ever see 16, so force each width.
  const auto batch = gdr2_test::random_batch(75, 2, 130, 1, 2, 128, 100, Gates::typical, true);
  for (const char* vt : {"16", "32", "64"}) {
    ASSERT_EQ(setenv("GDR2_CUDA_STATE_VT", vt, 1), 0);
    expect_matches(batch, DType::f32, Kernel::chunk_accurate, std::string("V tile ") + vt);
    expect_matches(batch, DType::bf16, Kernel::chunk_fast, std::string("V tile ") + vt);
  }
  const auto wide = gdr2_test::random_batch(76, 1, 70, 1, 1, 256, 64, Gates::typical, true);
  for (const char* vt : {"16", "32", "64"}) {  // K = 256 caps the tile at 32
    ASSERT_EQ(setenv("GDR2_CUDA_STATE_VT", vt, 1), 0);
    expect_matches(wide, DType::f32, Kernel::chunk_accurate, std::string("K=256, V tile ") + vt);
  }
  ASSERT_EQ(unsetenv("GDR2_CUDA_STATE_VT"), 0);
  ASSERT_EQ(setenv("GDR2_CUDA_STATE_PREFETCH", "0", 1), 0);  // the variant without early loads
  expect_matches(batch, DType::f32, Kernel::chunk_accurate, "no prefetch");
  ASSERT_EQ(unsetenv("GDR2_CUDA_STATE_PREFETCH"), 0);
}

// ---- decode ---------------------------------------------------------------------------------------------

TEST(CudaForward, DecodeStepByStepEqualsOneLongCall) {
  GDR2_REQUIRE_DEVICE();
  // 3 sequences x (HV = 4, H = 2), 40 tokens. One call over all tokens versus 40 calls of T = 1 that
  // update the state in place (h0 == ht). The recurrent kernel does the same fp32 operations in the same
  // order either way, so o and the final state must agree bit for bit.
  // With many states, the T = 1 steps run the streaming kernel and the long call the tiled one by default:
  // those two must agree bit for bit too (recurrent_step.cuh). Every pairing of kernels and block shapes:
  //   steps / long call: default / default (warps 4 and 8), stream / tiled, stream / stream, tiled / stream.
  const int B = 3, T = 40, H = 2, HV = 4, K = 64, V = 64;
  const auto batch = gdr2_test::random_batch(80, B, T, H, HV, K, V, Gates::typical, true);
  struct Choice { const char* warps; const char* steps_kernel; const char* long_kernel; };
  for (Choice choice : {Choice{"4", nullptr, nullptr}, Choice{"8", nullptr, nullptr}, Choice{"8", "stream", "tiled"},
                        Choice{"8", "stream", "stream"}, Choice{"8", "tiled", "stream"}})
  for (DType t : kDTypes) {
    const ScopedEnv warps_env("GDR2_CUDA_RECURRENT_WARPS", choice.warps);
    const std::string warps = std::string(choice.warps) + ", steps " + (choice.steps_kernel ? choice.steps_kernel : "default") +
                              ", long call " + (choice.long_kernel ? choice.long_kernel : "default");
    DeviceBatch whole = to_device(batch, t);
    {
      const ScopedEnv kernel_env("GDR2_CUDA_RECURRENT_KERNEL", choice.long_kernel);
      launch(Kernel::recurrent, whole.problem, whole.forward_tensors());
    }
    const ScopedEnv kernel_env("GDR2_CUDA_RECURRENT_KERNEL", choice.steps_kernel);
    const auto o_whole = whole.output();
    const auto ht_whole = whole.final_state();

    DeviceBuffer state = upload(batch.h0, DType::f32);
    std::vector<double> o_steps(o_whole.size());
    for (int step = 0; step < T; ++step) {
      gdr2::Batch<double> token = gdr2::Batch<double>::zeros(B, 1, H, HV, K, V, false);
      token.scale = batch.scale;
      for (int n = 0; n < B; ++n) {
        const std::size_t kfrom = static_cast<std::size_t>((n * T + step) * H * K), kto = static_cast<std::size_t>(n * H * K);
        const std::size_t vfrom = static_cast<std::size_t>((n * T + step) * HV * V), vto = static_cast<std::size_t>(n * HV * V);
        std::copy_n(batch.q.begin() + kfrom, H * K, token.q.begin() + kto);
        std::copy_n(batch.k.begin() + kfrom, H * K, token.k.begin() + kto);
        std::copy_n(batch.g.begin() + kfrom, H * K, token.g.begin() + kto);
        std::copy_n(batch.b.begin() + kfrom, H * K, token.b.begin() + kto);
        std::copy_n(batch.v.begin() + vfrom, HV * V, token.v.begin() + vto);
        std::copy_n(batch.w.begin() + vfrom, HV * V, token.w.begin() + vto);
      }
      DeviceBatch d = to_device(token, t);
      auto x = d.forward_tensors();
      x.h0 = state.as<float>();
      x.ht = state.as<float>();  // in place
      launch(Kernel::recurrent, d.problem, x);
      const auto o = d.output();
      for (int n = 0; n < B; ++n)
        std::copy_n(o.begin() + n * HV * V, HV * V, o_steps.begin() + (n * T + step) * HV * V);
    }
    EXPECT_EQ(o_steps, o_whole) << dtype_label(t) << ", warps " << warps;
    EXPECT_EQ(download(state, ht_whole.size(), DType::f32), ht_whole) << dtype_label(t) << ", warps " << warps;
  }
}

TEST(CudaForward, StreamingRecurrentKernelMatchesReference) {
  GDR2_REQUIRE_DEVICE();
  // GDR2_CUDA_RECURRENT_KERNEL=stream runs the streaming kernel (state slices of 64 columns through shared
  // memory, persistent grid) on any T: against the reference on every dtype and the shapes it supports
  // (K <= 256, V a multiple of 4: one to four slices, the last one partial), GVA, varlen with empty
  // sequences, no h0, gate regimes.
  const ScopedEnv kernel_env("GDR2_CUDA_RECURRENT_KERNEL", "stream");
  struct Case { const char* what; gdr2::Batch<double> batch; };
  const Case cases[] = {
      {"B=3 T=5 H=2 HV=4 K=V=128", gdr2_test::random_batch(90, 3, 5, 2, 4, 128, 128, Gates::typical, true)},
      {"B=2 T=3 K=1 V=4", gdr2_test::random_batch(91, 2, 3, 1, 1, 1, 4, Gates::typical, true)},
      {"B=2 T=7 K=33 V=36 strong decay", gdr2_test::random_batch(92, 2, 7, 1, 2, 33, 36, Gates::strong_decay, true)},
      {"varlen {1, 0, 3, 1} K=64 V=32", gdr2_test::random_batch(93, 1, 0, 2, 2, 64, 32, Gates::typical, true, {1, 0, 3, 1})},
      {"no h0, B=4 T=1 K=V=64", gdr2_test::random_batch(94, 4, 1, 1, 1, 64, 64, Gates::typical, false)},
      {"gate edges B=2 T=4 K=V=32", gdr2_test::random_batch(95, 2, 4, 1, 1, 32, 32, Gates::gate_edges, true)},
      {"B=2 T=3 K=256 V=200", gdr2_test::random_batch(98, 2, 3, 1, 1, 256, 200, Gates::typical, true)},
      {"B=1 T=2 K=200 V=132 strong decay", gdr2_test::random_batch(99, 1, 2, 1, 2, 200, 132, Gates::strong_decay, true)},
  };
  for (const Case& c : cases)
    for (DType t : kDTypes) expect_matches(c.batch, t, Kernel::recurrent, std::string("stream kernel, ") + c.what);
  // A larger K again after a smaller one of the same row-group size (K = 256, then 200 above): the kernel's
  // shared-memory limit, set once per size, must still admit the larger call.
  expect_matches(cases[6].batch, DType::f32, Kernel::recurrent, "stream kernel, K=256 after K=200");
  // ht = nullptr: o is still right and the state buffer is not written.
  const auto batch = cases[0].batch;
  const auto rounded = rounded_for_device(batch, DType::f32);
  const auto ref = gdr2::batched_forward(rounded, gdr2::Form::recurrent);
  DeviceBatch d = to_device(batch, DType::f32);
  auto x = d.forward_tensors();
  x.ht = nullptr;
  launch(Kernel::recurrent, d.problem, x);
  EXPECT_LE(relative_error(d.output(), ref.o), calibrate(rounded, ref, DType::f32, Kernel::recurrent).tol_o);
  for (double e : d.final_state()) ASSERT_TRUE(std::isnan(e)) << "ht was written although it is nullptr";
}

TEST(CudaForward, StreamingKernelEqualsTiledOnManyItems) {
  GDR2_REQUIRE_DEVICE();
  // Decode steps with more items than blocks, so every block walks several items and reuses its three
  // buffers (the cp.async pipeline wraps around): 300 sequences x 2 value heads at K = V = 128 (1200 slices of
  // 64 columns, two blocks per SM), and 140 sequences at K = 256, V = 96 (a full and a half slice each, one
  // block per SM). In place (h0 == ht) as a decode step runs. Bit for bit equal to the tiled kernel, every dtype,
  // and the final state is the reference's (fp32 arithmetic on one token: 1e-5 is far above its rounding).
  const gdr2::Batch<double> batches[] = {gdr2_test::random_batch(96, 300, 1, 1, 2, 128, 128, Gates::typical, true),
                                         gdr2_test::random_batch(97, 140, 1, 1, 1, 256, 96, Gates::typical, true)};
  for (const auto& batch : batches)
  for (DType t : kDTypes) {
    const std::string what = dtype_label(t) + std::string(" K=") + std::to_string(batch.K) + " V=" + std::to_string(batch.V);
    std::vector<double> o[2], state[2];
    const char* kernels[] = {"tiled", "stream"};
    for (int i = 0; i < 2; ++i) {
      const ScopedEnv kernel_env("GDR2_CUDA_RECURRENT_KERNEL", kernels[i]);
      DeviceBatch d = to_device(batch, t);
      auto x = d.forward_tensors();
      x.ht = d.h0.as<float>();  // in place, as a decode step runs
      launch(Kernel::recurrent, d.problem, x);
      o[i] = d.output();
      state[i] = download(d.h0, d.state_count, DType::f32);
    }
    EXPECT_EQ(o[1], o[0]) << what;
    EXPECT_EQ(state[1], state[0]) << what;
    const auto ref = gdr2::batched_forward(rounded_for_device(batch, t), gdr2::Form::recurrent);
    EXPECT_LT(relative_error(state[1], ref.ht), 1e-5) << what << ": the final state is the reference's";
  }
}

// ---- family collapses -------------------------------------------------------------------------------------

template <class Member>
gdr2::Batch<double> as_batch(const Member& member) {
  const gdr2::Head<double> h = gdr2::as_gdr2(member);
  auto x = gdr2::Batch<double>::zeros(1, h.T(), 1, 1, h.dk(), h.dv(), true);
  for (gdr2::Index t = 0; t < h.T(); ++t) {
    for (gdr2::Index d = 0; d < h.dk(); ++d) {
      const auto at = static_cast<std::size_t>(t * h.dk() + d);
      x.q[at] = h.q(t, d); x.k[at] = h.k(t, d); x.g[at] = h.g(t, d); x.b[at] = h.b(t, d);
    }
    for (gdr2::Index d = 0; d < h.dv(); ++d) {
      const auto at = static_cast<std::size_t>(t * h.dv() + d);
      x.v[at] = h.v(t, d); x.w[at] = h.w(t, d);
    }
  }
  for (gdr2::Index i = 0; i < h.dk(); ++i)
    for (gdr2::Index j = 0; j < h.dv(); ++j) x.h0[static_cast<std::size_t>(i * h.dv() + j)] = h.s0(i, j);
  x.scale = h.scale;
  return x;
}

// The kernel on a family member (through as_gdr2) against the member's own independent reference.
template <class Member, class MemberForward>
void expect_collapse(const Member& member, MemberForward&& member_forward, const char* what) {
  const gdr2::Batch<double> batch = as_batch(member);  // every value is a float: rounding to f32 is exact
  const auto ref = member_forward(member);
  std::vector<double> ref_o(ref.o.data(), ref.o.data() + ref.o.size());
  std::vector<double> ref_s(ref.s.data(), ref.s.data() + ref.s.size());
  const auto f = gdr2::batched_forward(cast_batch<float>(batch), gdr2::Form::recurrent);
  const double tol_o = unit_roundoff(DType::f32) + 10 * relative_error(to_doubles(f.o), ref_o);
  const double tol_s = std::max(1e-7, 10 * relative_error(to_doubles(f.ht), ref_s));
  for (Kernel kernel : {Kernel::recurrent, Kernel::chunk_accurate}) {
    DeviceBatch d = to_device(batch, DType::f32);
    launch(kernel, d.problem, d.forward_tensors());
    EXPECT_LE(relative_error(d.output(), ref_o), tol_o) << what << " " << kernel_label(kernel);
    EXPECT_LE(relative_error(d.final_state(), ref_s), tol_s) << what << " " << kernel_label(kernel);
  }
}

double as_float(double x) { return static_cast<double>(static_cast<float>(x)); }

TEST(CudaForward, KdaAndGatedDeltaNetCollapses) {
  GDR2_REQUIRE_DEVICE();
  const auto h = gdr2_test::random_head(90, 100, 32, 24, Gates::typical, true).cast<float>().cast<double>();
  gdr2::KdaHead<double> kda{h.q, h.k, h.g, h.v, h.b.col(0), h.s0, as_float(h.scale)};
  expect_collapse(kda, [](const auto& m) { return gdr2::kda_forward(m); }, "KDA");
  gdr2::GatedDeltaNetHead<double> gdn{h.q, h.k, h.v, h.g.col(0), h.b.col(0), h.s0, as_float(h.scale)};
  expect_collapse(gdn, [](const auto& m) { return gdr2::gated_deltanet_forward(m); }, "Gated DeltaNet");
}

// ---- properties over random shapes --------------------------------------------------------------------

TEST(CudaForward, RandomShapesProperty) {
  GDR2_REQUIRE_DEVICE();
  const bool ok = rc::check("every kernel matches the reference on random shapes", [] {
    const int B = *rc::gen::inRange(1, 3);
    const int T = *rc::gen::inRange(0, 140);
    const int H = *rc::gen::inRange(1, 3);
    const int group = *rc::gen::inRange(1, 3);
    const int K = *rc::gen::inRange(1, 129);
    const int V = *rc::gen::inRange(1, 97);
    const auto regime = *rc::gen::element(Gates::typical, Gates::strong_decay, Gates::gate_edges, Gates::negative_eig);
    const auto kernel = *rc::gen::element(Kernel::recurrent, Kernel::chunk_accurate, Kernel::chunk_fast);
    const auto t = *rc::gen::element(DType::f32, DType::bf16, DType::f16);
    const bool with_h0 = *rc::gen::arbitrary<bool>();
    const auto seed = *rc::gen::arbitrary<std::uint32_t>();
    const auto batch = gdr2_test::random_batch(seed, B, T, H, H * group, K, V, regime, with_h0);
    const Comparison c = compare_forward(batch, t, kernel);
    RC_LOG() << kernel_label(kernel) << " " << dtype_label(t) << " " << gdr2_test::name(regime) << ": " << c.describe();
    RC_ASSERT(c.passes());
  });
  EXPECT_TRUE(ok);
}

// ---- negative controls: the comparison must reject a wrong kernel result ---------------------------------

TEST(CudaForward, NegativeControlsAreRejected) {
  GDR2_REQUIRE_DEVICE();
  const auto batch = gdr2_test::random_batch(100, 1, 96, 1, 1, 32, 32, Gates::typical, true);
  for (Kernel kernel : kKernels) {
    // A wrong scale (as a kernel that forgot to apply it would produce, here off by 0.1%).
    auto wrong_scale = [](DeviceBatch& d) { d.problem.scale *= 1.001f; };
    EXPECT_FALSE(compare_forward(batch, DType::f32, kernel, wrong_scale).passes()) << kernel_label(kernel);
    // A decay that is one token stale: the device sees g shifted by one token.
    auto stale_gate = [&](DeviceBatch& d) {
      std::vector<double> g(batch.g.size());
      std::copy(batch.g.begin(), batch.g.end() - 32, g.begin() + 32);
      std::copy(batch.g.begin(), batch.g.begin() + 32, g.begin());
      d.g = upload(g, DType::f32);
    };
    EXPECT_FALSE(compare_forward(batch, DType::f32, kernel, stale_gate).passes()) << kernel_label(kernel);
    // The initial state ignored.
    auto no_h0 = [](DeviceBatch& d) { d.h0 = DeviceBuffer(); };
    EXPECT_FALSE(compare_forward(batch, DType::f32, kernel, no_h0).passes()) << kernel_label(kernel);
  }
}

// ---- the tensor-core path (chunk/fast on bf16 and f16 inputs, K <= 128) ------------------------------------

TEST(CudaForward, TensorCorePathOddShapesGvaAndStrongDecay) {
  GDR2_REQUIRE_DEVICE();
  // K and V not multiples of 16 (the workspace pads them), T not a multiple of 64, GVA, K at the limit.
  struct Shape { int T, H, HV, K, V; };
  for (Shape s : {Shape{1, 1, 1, 1, 1}, Shape{63, 1, 2, 7, 5}, Shape{64, 2, 2, 100, 33}, Shape{129, 1, 3, 128, 80},
                  Shape{200, 2, 4, 48, 130}}) {
    const auto batch = gdr2_test::random_batch(500 + s.T, 2, s.T, s.H, s.HV, s.K, s.V, Gates::typical, true);
    for (DType t : {DType::bf16, DType::f16})
      expect_matches(batch, t, Kernel::chunk_fast,
                     "T=" + std::to_string(s.T) + " H=" + std::to_string(s.H) + " HV=" + std::to_string(s.HV) +
                         " K=" + std::to_string(s.K) + " V=" + std::to_string(s.V));
  }
  auto strong = gdr2_test::random_batch(31, 1, 128, 1, 1, 64, 64, Gates::typical, true);
  for (auto& e : strong.g) e = -50.0;  // exp(-G) would be exp(3200) inside one chunk
  expect_matches(strong, DType::bf16, Kernel::chunk_fast, "g = -50 everywhere");
}

TEST(CudaForward, TensorCorePathNegativeControlsAreRejected) {
  GDR2_REQUIRE_DEVICE();
  // The bf16 tolerance is wider than the fp32 one, so the controls must still fall outside it.
  const auto batch = gdr2_test::random_batch(101, 1, 96, 1, 1, 32, 32, Gates::typical, true);
  const Comparison clean = compare_forward(batch, DType::bf16, Kernel::chunk_fast);
  std::cout << "tensor-core path, B=1 T=96 K=V=32 bf16: " << clean.describe() << "\n";
  ASSERT_TRUE(clean.passes()) << clean.describe();
  auto wrong_scale = [](DeviceBatch& d) { d.problem.scale *= 1.05f; };  // 5%: above bf16's ~0.4% per rounding
  EXPECT_FALSE(compare_forward(batch, DType::bf16, Kernel::chunk_fast, wrong_scale).passes());
  auto stale_gate = [&](DeviceBatch& d) {  // g shifted by one token
    std::vector<double> g(batch.g.size());
    std::copy(batch.g.begin(), batch.g.end() - 32, g.begin() + 32);
    std::copy(batch.g.begin(), batch.g.begin() + 32, g.begin());
    d.g = upload(g, DType::f32);
  };
  EXPECT_FALSE(compare_forward(batch, DType::bf16, Kernel::chunk_fast, stale_gate).passes());
  auto no_h0 = [](DeviceBatch& d) { d.h0 = DeviceBuffer(); };
  EXPECT_FALSE(compare_forward(batch, DType::bf16, Kernel::chunk_fast, no_h0).passes());
}

// ---- host API: errors are exceptions with a clear message -------------------------------------------------

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const gdr2::cuda::error& e) {
    return e.what();
  }
  return "(no gdr2::cuda::error thrown)";
}

gdr2::cuda::ForwardTensors fake_tensors() {
  // Never dereferenced: validation fails first. Aligned, non-null addresses.
  alignas(16) static float storage[16];
  gdr2::cuda::ForwardTensors x;
  x.q = x.k = x.v = x.b = x.w = storage;
  x.g = storage;
  x.o = storage;
  return x;
}

TEST(CudaApi, RejectsBadShapesWithClearMessages) {
  gdr2::cuda::Problem p;
  p.B = 1; p.T = 4; p.H = 2; p.HV = 3; p.K = 16; p.V = 16;
  const auto x = fake_tensors();
  using testing::HasSubstr;
  EXPECT_THAT(error_of([&] { gdr2::cuda::recurrent_forward(p, x); }), HasSubstr("HV (3) must be a multiple of H (2)"));
  EXPECT_THAT(error_of([&] { gdr2::cuda::chunk_forward(p, x, gdr2::cuda::Mode::accurate); }),
              HasSubstr("gdr2::cuda::chunk_forward: HV (3)"));
  p.HV = 2;
  p.K = 300;
  EXPECT_THAT(error_of([&] { gdr2::cuda::recurrent_forward(p, x); }), HasSubstr("K and V must be <= 256"));
  EXPECT_THAT(error_of([&] { gdr2::cuda::chunk_forward(p, x, gdr2::cuda::Mode::fast); }), HasSubstr("K must be <= 256"));
  p.K = 16;
  p.T = -1;
  EXPECT_THAT(error_of([&] { gdr2::cuda::recurrent_forward(p, x); }), HasSubstr("T must be >= 0, got -1"));
  p.T = 4;
  p.scale = -1.0f;
  EXPECT_THAT(error_of([&] { gdr2::cuda::recurrent_forward(p, x); }), HasSubstr("scale must be finite"));
  p.scale = 0.0f;
  p.num_seqs = 5;
  EXPECT_THAT(error_of([&] { gdr2::cuda::recurrent_forward(p, x); }), HasSubstr("num_seqs (5) is given without cu_seqlens"));
  p.num_seqs = 0;
  p.B = 2;
  alignas(16) static std::int32_t offsets[3] = {0, 2, 4};
  p.cu_seqlens = offsets;
  p.num_seqs = 2;
  EXPECT_THAT(error_of([&] { gdr2::cuda::recurrent_forward(p, x); }), HasSubstr("needs B == 1, got B = 2"));
}

TEST(CudaApi, RejectsMissingAndMisalignedPointers) {
  gdr2::cuda::Problem p;
  p.B = 1; p.T = 4; p.H = 1; p.HV = 1; p.K = 16; p.V = 16;
  using testing::HasSubstr;
  auto x = fake_tensors();
  x.o = nullptr;
  EXPECT_THAT(error_of([&] { gdr2::cuda::recurrent_forward(p, x); }), HasSubstr("tensor 'o' is a null pointer"));
  x = fake_tensors();
  x.k = reinterpret_cast<const char*>(x.k) + 1;
  p.dtype = DType::bf16;
  EXPECT_THAT(error_of([&] { gdr2::cuda::chunk_forward(p, x, gdr2::cuda::Mode::fast); }),
              HasSubstr("tensor 'k' at address"));
  x = fake_tensors();
  x.ht = reinterpret_cast<float*>(reinterpret_cast<char*>(const_cast<void*>(x.q)) + 2);
  EXPECT_THAT(error_of([&] { gdr2::cuda::recurrent_forward(p, x); }), HasSubstr("tensor 'ht' at address"));
}

TEST(CudaApi, RejectsBadSequenceOffsets) {
  GDR2_REQUIRE_DEVICE();
  using testing::HasSubstr;
  gdr2::cuda::Problem p;
  p.B = 1; p.T = 10; p.K = 16; p.V = 16; p.dtype = DType::f32;
  const auto x = fake_tensors();
  auto with_offsets = [&](std::vector<double> offsets) {
    std::vector<std::int32_t> o(offsets.begin(), offsets.end());
    DeviceBuffer d(o.size() * 4);
    check(cudaMemcpy(d.get(), o.data(), o.size() * 4, cudaMemcpyHostToDevice), "cudaMemcpy");
    p.cu_seqlens = d.as<std::int32_t>();
    p.num_seqs = static_cast<int>(o.size()) - 1;
    return error_of([&] { gdr2::cuda::chunk_forward(p, x, gdr2::cuda::Mode::accurate); });
  };
  EXPECT_THAT(with_offsets({1, 10}), HasSubstr("cu_seqlens[0] must be 0, got 1"));
  EXPECT_THAT(with_offsets({0, 6, 4, 10}), HasSubstr("cu_seqlens must be non-decreasing"));
  EXPECT_THAT(with_offsets({0, 4, 9}), HasSubstr("cu_seqlens[num_seqs] = 9 must equal T = 10"));
  static std::int32_t host_offsets[2] = {0, 10};
  p.cu_seqlens = host_offsets;
  p.num_seqs = 1;
  EXPECT_THAT(error_of([&] { gdr2::cuda::recurrent_forward(p, x); }), HasSubstr("cu_seqlens must be a device pointer"));
}

TEST(CudaApi, WorkspacePoolKeepsMemoryUntilTrimmed) {
  // Without a device (or before any chunk call) the pool does not exist: 0 bytes, and trimming is a no-op.
  if (!gdr2::cuda::device_available()) {
    EXPECT_EQ(gdr2::cuda::workspace_pool_bytes(), 0u);
    EXPECT_NO_THROW(gdr2::cuda::trim_workspace_pool());
    GTEST_SKIP() << "skipped: no CUDA device (the pool's behaviour on a device is not checked)";
  }
  const auto batch = gdr2_test::random_batch(91, 2, 200, 2, 2, 64, 64, Gates::typical, true);
  DeviceBatch d = to_device(batch, DType::bf16);
  auto forward = [&] {
    gdr2::cuda::chunk_forward(d.problem, d.forward_tensors(), gdr2::cuda::Mode::fast);
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  };
  forward();
  const std::size_t held = gdr2::cuda::workspace_pool_bytes();
  EXPECT_GT(held, 0u) << "the freed workspace should stay in the pool after a synchronisation";
  forward();
  EXPECT_EQ(gdr2::cuda::workspace_pool_bytes(), held) << "a second identical call should reuse the pool's memory";
  gdr2::cuda::trim_workspace_pool();
  EXPECT_EQ(gdr2::cuda::workspace_pool_bytes(), 0u) << "trim_workspace_pool should give the unused memory back";
  forward();  // and the pool is usable again after a trim
  EXPECT_GT(gdr2::cuda::workspace_pool_bytes(), 0u);
}

TEST(CudaForward, RecurrentEveryWarpCount) {
  GDR2_REQUIRE_DEVICE();
  // The recurrent kernel runs with 8 warps per block (16 state rows per thread at K = 128) unless
  // GDR2_CUDA_RECURRENT_WARPS=4 asks for 4; both must match the reference, for every dtype and shape class.
  const auto batch = gdr2_test::random_batch(77, 3, 37, 2, 4, 128, 96, Gates::typical, true);
  const auto strong = gdr2_test::random_batch(78, 2, 20, 1, 2, 256, 33, Gates::strong_decay, true);
  for (const char* warps : {"4", "8"}) {
    ASSERT_EQ(setenv("GDR2_CUDA_RECURRENT_WARPS", warps, 1), 0);
    for (DType t : kDTypes) {
      expect_matches(batch, t, Kernel::recurrent, std::string("warps ") + warps);
      expect_matches(strong, t, Kernel::recurrent, std::string("K=256, strong decay, warps ") + warps);
    }
  }
  ASSERT_EQ(setenv("GDR2_CUDA_RECURRENT_WARPS", "3", 1), 0);  // a bad override is a clear error
  DeviceBatch d = to_device(batch, DType::f32);
  using testing::HasSubstr;
  EXPECT_THAT(error_of([&] { gdr2::cuda::recurrent_forward(d.problem, d.forward_tensors()); }),
              HasSubstr("GDR2_CUDA_RECURRENT_WARPS must be 4 or 8, got '3'"));
  ASSERT_EQ(unsetenv("GDR2_CUDA_RECURRENT_WARPS"), 0);
}

TEST(CudaForward, RecurrentKernelOverrideErrors) {
  GDR2_REQUIRE_DEVICE();
  using testing::HasSubstr;
  const auto odd_v = gdr2_test::random_batch(97, 2, 1, 1, 1, 16, 33, Gates::typical, true);
  DeviceBatch d = to_device(odd_v, DType::f32);
  auto run = [&] { gdr2::cuda::recurrent_forward(d.problem, d.forward_tensors()); };
  {
    const ScopedEnv kernel_env("GDR2_CUDA_RECURRENT_KERNEL", "fast");
    EXPECT_THAT(error_of(run), HasSubstr("GDR2_CUDA_RECURRENT_KERNEL must be tiled or stream, got 'fast'"));
  }
  {
    const ScopedEnv kernel_env("GDR2_CUDA_RECURRENT_KERNEL", "stream");
    EXPECT_THAT(error_of(run), HasSubstr("GDR2_CUDA_RECURRENT_KERNEL=stream needs V a multiple of 4 (got 33)"));
    const ScopedEnv warps_env("GDR2_CUDA_RECURRENT_WARPS", "4");
    EXPECT_THAT(error_of(run), HasSubstr("GDR2_CUDA_RECURRENT_KERNEL=stream runs 8 warps"));
  }
  // By default a decode step with an unsupported shape runs the tiled kernel, and is right.
  expect_matches(odd_v, DType::f32, Kernel::recurrent, "decode step with V = 33 (tiled kernel)");
}

}  // namespace
