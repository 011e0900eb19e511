#pragma once
// Seeded random problems for tests, benchmarks and the verify tool: every value is a double
// (so casting to any wider type is exact and every precision sees the same inputs).
#include <random>
#include <gdr2/head.hpp>
#include <gdr2/batched.hpp>

namespace gdr2_test {

using gdr2::Index;

// Gate regimes of the test plan (spec section 1 ranges).
enum class Gates {
  typical,        // unit-norm q, k; g in [-5, -0.1]; b, w in [0, 1]
  weak_decay,     // g in [-1e-3, 0], some exactly 0
  strong_decay,   // g in [-50, 0], some exactly 0 and some exactly -50
  negative_eig,   // b in [0, 2] (negative-eigenvalue variant)
  gate_edges,     // b, w exactly 0, 1 or 2 (b), mixed with interior values
  raw_keys,       // q, k not normalised: entries N(0, 1/d) (norms vary around 1), g in [-5, -0.1], b in [0, 1]
                  // (b up to 2 with |k| > 1 makes 1 - b k.k < -1: the state grows exponentially)
};
inline constexpr Gates kAllGates[] = {Gates::typical, Gates::weak_decay, Gates::strong_decay,
                                      Gates::negative_eig, Gates::gate_edges, Gates::raw_keys};
inline const char* name(Gates r) {
  switch (r) {
    case Gates::typical: return "typical";
    case Gates::weak_decay: return "weak_decay";
    case Gates::strong_decay: return "strong_decay";
    case Gates::negative_eig: return "negative_eig";
    case Gates::gate_edges: return "gate_edges";
    case Gates::raw_keys: return "raw_keys";
  }
  return "?";
}

struct Sampler {
  std::mt19937_64 rng;
  explicit Sampler(std::uint64_t seed) : rng(seed) {}
  double uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); }
  double normal() { return std::normal_distribution<double>()(rng); }
  bool coin(double p) { return std::bernoulli_distribution(p)(rng); }
  int pick(int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng); }

  // One row of a key/query: unit norm unless raw.
  void key_row(Eigen::Ref<gdr2::Matrix<double>> row, bool raw) {
    for (Index d = 0; d < row.cols(); ++d) row(0, d) = normal();
    if (raw) row /= std::sqrt(static_cast<double>(row.cols()));
    else if (row.norm() > 0) row /= row.norm();
  }
  double log_decay(Gates r) {
    switch (r) {
      case Gates::weak_decay: return coin(0.2) ? 0.0 : uniform(-1e-3, 0.0);
      case Gates::strong_decay: return coin(0.1) ? 0.0 : (coin(0.1) ? -50.0 : uniform(-50.0, 0.0));
      default: return uniform(-5.0, -0.1);
    }
  }
  double erase(Gates r) {
    switch (r) {
      case Gates::negative_eig: return uniform(0.0, 2.0);
      case Gates::gate_edges: { const int c = pick(4); return c == 0 ? 0.0 : c == 1 ? 1.0 : c == 2 ? 2.0 : uniform(0, 2); }
      default: return uniform(0.0, 1.0);
    }
  }
  double write(Gates r) {
    if (r == Gates::gate_edges) { const int c = pick(3); return c == 0 ? 0.0 : c == 1 ? 1.0 : uniform(0, 1); }
    return uniform(0.0, 1.0);
  }
};

// A random head; s0 is random (N(0, 1) entries) when with_s0, else zero.
inline gdr2::Head<double> random_head(std::uint64_t seed, Index T, Index dk, Index dv, Gates regime = Gates::typical,
                                      bool with_s0 = true) {
  Sampler s(seed);
  auto h = gdr2::Head<double>::zeros(T, dk, dv);
  const bool raw = regime == Gates::raw_keys;
  for (Index t = 0; t < T; ++t) {
    s.key_row(h.q.row(t), raw);
    s.key_row(h.k.row(t), raw);
    for (Index d = 0; d < dk; ++d) { h.g(t, d) = s.log_decay(regime); h.b(t, d) = s.erase(regime); }
    for (Index d = 0; d < dv; ++d) { h.v(t, d) = s.normal(); h.w(t, d) = s.write(regime); }
  }
  if (with_s0)
    for (Index i = 0; i < dk; ++i)
      for (Index j = 0; j < dv; ++j) h.s0(i, j) = s.normal();
  return h;
}

// A random batch on the ecosystem layout, filled head by head with random_head's distributions.
// lengths: empty for B sequences of length T; else a packed varlen batch (B = 1) of these lengths.
inline gdr2::Batch<double> random_batch(std::uint64_t seed, Index B, Index T, Index H, Index HV, Index K, Index V,
                                        Gates regime = Gates::typical, bool with_h0 = true,
                                        const std::vector<Index>& lengths = {}) {
  Index total = T;
  if (!lengths.empty()) { B = 1; total = 0; for (Index l : lengths) total += l; }
  auto x = gdr2::Batch<double>::zeros(B, total, H, HV, K, V, false);
  if (!lengths.empty()) {
    x.cu_seqlens.push_back(0);
    for (Index l : lengths) x.cu_seqlens.push_back(x.cu_seqlens.back() + l);
  }
  Sampler s(seed);
  const bool raw = regime == Gates::raw_keys;
  gdr2::Matrix<double> row(1, K);
  for (Index bt = 0; bt < B * total; ++bt) {
    for (Index h = 0; h < H; ++h) {
      const size_t at = static_cast<size_t>((bt * H + h) * K);
      s.key_row(row, raw); for (Index d = 0; d < K; ++d) x.q[at + d] = row(0, d);
      s.key_row(row, raw); for (Index d = 0; d < K; ++d) x.k[at + d] = row(0, d);
      for (Index d = 0; d < K; ++d) { x.g[at + d] = s.log_decay(regime); x.b[at + d] = s.erase(regime); }
    }
    for (Index hv = 0; hv < HV; ++hv) {
      const size_t at = static_cast<size_t>((bt * HV + hv) * V);
      for (Index d = 0; d < V; ++d) { x.v[at + d] = s.normal(); x.w[at + d] = s.write(regime); }
    }
  }
  if (with_h0) {
    x.h0.resize(static_cast<size_t>(x.num_sequences() * HV * K * V));
    for (auto& e : x.h0) e = s.normal();
  }
  return x;
}

// Relative Frobenius error ||a - b|| / ||b|| (||a - b|| when b = 0), evaluated in the matrices' own scalar
// type when it is at least as precise as double (so 1e-40 differences of multiprecision results are seen),
// otherwise in double.
template <class DA, class DB>
double relative_error(const Eigen::MatrixBase<DA>& a, const Eigen::MatrixBase<DB>& b) {
  using Scalar = typename DB::Scalar;
  if constexpr (std::is_same_v<typename DA::Scalar, Scalar> &&
                !std::is_same_v<Scalar, float> && !std::is_same_v<Scalar, Eigen::half> &&
                !std::is_same_v<Scalar, Eigen::bfloat16>) {
    using std::sqrt;
    const Scalar num = (a - b).squaredNorm(), den = b.squaredNorm();
    return gdr2::to_double(den == Scalar(0) ? Scalar(sqrt(num)) : Scalar(sqrt(num / den)));
  } else {
    double num = 0, den = 0;
    for (Index i = 0; i < b.rows(); ++i)
      for (Index j = 0; j < b.cols(); ++j) {
        const double x = gdr2::to_double(a(i, j)), y = gdr2::to_double(b(i, j));
        num += (x - y) * (x - y);
        den += y * y;
      }
    return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
  }
}

// Random upstream gradients (dout: T x d_v, ds_final: d_k x d_v), N(0, 1) entries.
struct Upstream {
  gdr2::Matrix<double> dout, ds_final;
};
inline Upstream random_upstream(std::uint64_t seed, Index T, Index dk, Index dv) {
  Sampler s(seed ^ 0xd007ULL);
  Upstream u{gdr2::Matrix<double>(T, dv), gdr2::Matrix<double>(dk, dv)};
  for (Index i = 0; i < u.dout.size(); ++i) u.dout.data()[i] = s.normal();
  for (Index i = 0; i < u.ds_final.size(); ++i) u.ds_final.data()[i] = s.normal();
  return u;
}

}  // namespace gdr2_test
