// fast_weight: the Gated Delta Rule-2 as online regression on a fast-weight memory (docs/fast-weight.md).
//
//   fast_weight [--plot-dir DIR]
//
// Prints a Markdown fragment (docs/fast-weight.md embeds it verbatim between its "generated" markers, and the
// ctest Docs.FastWeightPageMatchesProgram checks that the two agree):
//   1. one token walked through decay, gated read, residual and write, with the local objective L_t
//      (derivations/01-recurrence.md, Eq. 1.4) before and after, and checks that S_t is its minimiser;
//   2. a toy associative memory: N facts, each arriving as two tokens that each carry half of the value (the other
//      half is noise), stored with DeltaNet, Gated DeltaNet, KDA and GDR-2 gate settings and read back;
//   3. with --plot-dir, the retrieval error against N as a data file and a gnuplot script (gnuplot -> PNG).
// Everything is computed in double from a fixed seed with a portable generator, so the printed (rounded) numbers
// are the same on every machine.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>
#include <gdr2/reference.hpp>

namespace {

using gdr2::Index;
using Mat = gdr2::Matrix<double>;
using Vec = gdr2::Vector<double>;

// SplitMix64 + Box-Muller: fully specified, unlike std::normal_distribution, so every platform draws the same.
struct Random {
  std::uint64_t state;
  explicit Random(std::uint64_t seed) : state(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return (static_cast<double>(next() >> 11) + 0.5) * 0x1.0p-53; }  // (0, 1)
  double normal() { return std::sqrt(-2.0 * std::log(uniform())) * std::cos(6.283185307179586 * uniform()); }
  Vec normal_vector(Index n) {
    Vec x(n);
    for (Index i = 0; i < n; ++i) x(i) = normal();
    return x;
  }
  Vec unit_vector(Index n) {
    Vec x = normal_vector(n);
    return x / x.norm();
  }
};

std::string fixed(double x, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, x);
  std::string s = buf;
  if (s == "-0." + std::string(static_cast<size_t>(digits), '0')) s.erase(0, 1);  // no "-0.000"
  return s;
}

std::string vec_text(const Vec& x) {
  std::string s = "(";
  for (Index i = 0; i < x.size(); ++i) s += (i ? ", " : "") + fixed(x(i), 3);
  return s + ")";
}

// ---- Part 1: one token -------------------------------------------------------------------------------------

// L_t(S) = ||S - Sbar||_F^2 - 2 < S^T k, z - Sbar^T e >   (derivations Eq. 1.4)
double objective(const Mat& s, const Mat& sbar, const Vec& k, const Vec& residual) {
  return (s - sbar).squaredNorm() - 2.0 * (s.transpose() * k).dot(residual);
}

bool one_token() {
  const Index dk = 4, dv = 3;
  Random rng(2026);
  auto h = gdr2::Head<double>::zeros(1, dk, dv);
  for (Index i = 0; i < dk; ++i)
    for (Index j = 0; j < dv; ++j) h.s0(i, j) = rng.normal();
  h.k.row(0) = rng.unit_vector(dk).transpose();
  h.q.row(0) = h.k.row(0);
  h.g.row(0) << std::log(0.9), std::log(0.5), 0.0, std::log(0.99);  // alpha = (0.9, 0.5, 1, 0.99)
  h.b.row(0) << 1.0, 0.8, 0.0, 0.5;                                   // erase gate (key axis)
  h.w.row(0) << 1.0, 0.0, 0.6;                                        // write gate (value axis)
  h.v.row(0) = rng.normal_vector(dv).transpose();

  const Vec k = h.k.row(0).transpose(), alpha = gdr2::exp_of(h.g.row(0).transpose());
  const Vec e = h.b.row(0).transpose().cwiseProduct(k);                      // e_t = b_t * k_t
  const Vec z = h.w.row(0).transpose().cwiseProduct(h.v.row(0).transpose());  // z_t = w_t * v_t
  const Mat sbar = alpha.asDiagonal() * h.s0;                                 // decay: Sbar_t = D_t S_{t-1}
  const Vec read = sbar.transpose() * e;                                      // gated read: r_t = Sbar_t^T e_t
  const Vec residual = z - read;                                              // residual: z_t - r_t
  const Mat s_t = sbar + k * residual.transpose();                            // write: S_t = Sbar_t + k_t (z_t - r_t)^T

  const auto reference = gdr2::recurrent_forward(h);
  const double vs_reference = (reference.s - s_t).cwiseAbs().maxCoeff();
  const double before = objective(h.s0, sbar, k, residual);
  const double at_sbar = objective(sbar, sbar, k, residual);
  const double after = objective(s_t, sbar, k, residual);
  // The gradient of L_t at S_t by central differences of objective() itself, not by the closed form of Eq. 1.5
  // (which vanishes at S_t by the same algebra that built S_t). L_t is quadratic, so a central difference is exact
  // up to rounding for any step; a step of 0.1 keeps the rounding near 1e-15.
  Mat gradient(dk, dv);
  for (Index i = 0; i < dk; ++i)
    for (Index j = 0; j < dv; ++j) {
      Mat step = Mat::Zero(dk, dv);
      step(i, j) = 0.1;
      gradient(i, j) = (objective(s_t + step, sbar, k, residual) - objective(s_t - step, sbar, k, residual)) / 0.2;
    }
  // L_t is a quadratic with Hessian 2I, so L_t(S_t + P) - L_t(S_t) = ||P||_F^2 for every P (Eq. 1.6).
  double worst_rise_error = 0, smallest_rise = 1e300;
  for (int trial = 0; trial < 1000; ++trial) {
    Mat p(dk, dv);
    for (Index i = 0; i < dk; ++i)
      for (Index j = 0; j < dv; ++j) p(i, j) = 0.1 * rng.normal();
    const double rise = objective(s_t + p, sbar, k, residual) - after;
    smallest_rise = std::min(smallest_rise, rise);
    worst_rise_error = std::max(worst_rise_error, std::abs(rise - p.squaredNorm()) / p.squaredNorm());
  }
  const bool minimiser = gradient.norm() < 1e-12 && vs_reference < 1e-14 && smallest_rise > 0 &&
                         worst_rise_error < 1e-9 &&
                         std::abs((after - at_sbar) + k.squaredNorm() * residual.squaredNorm()) < 1e-12;

  std::printf("### 1. One token, step by step\n\n");
  std::printf("d_k = %lld, d_v = %lld; alpha_t = exp(g_t) = %s, b_t = %s, w_t = %s, |k_t| = 1.\n\n",
              static_cast<long long>(dk), static_cast<long long>(dv), vec_text(alpha).c_str(),
              vec_text(h.b.row(0).transpose()).c_str(), vec_text(h.w.row(0).transpose()).c_str());
  std::printf("| step | formula | result |\n|---|---|---|\n");
  std::printf("| decay | Sbar = D_t S_{t-1} | rows of S_{t-1} scaled by alpha; \\|Sbar\\|_F = %s (was %s) |\n",
              fixed(sbar.norm(), 4).c_str(), fixed(h.s0.norm(), 4).c_str());
  std::printf("| erase key | e_t = b_t * k_t | %s |\n", vec_text(e).c_str());
  std::printf("| gated read | r_t = Sbar^T e_t | %s |\n", vec_text(read).c_str());
  std::printf("| gated value | z_t = w_t * v_t | %s (v_t = %s) |\n", vec_text(z).c_str(),
              vec_text(h.v.row(0).transpose()).c_str());
  std::printf("| residual | z_t - r_t | %s |\n", vec_text(residual).c_str());
  std::printf("| write | S_t = Sbar + k_t (z_t - r_t)^T | \\|S_t\\|_F = %s |\n\n", fixed(s_t.norm(), 4).c_str());
  std::printf("| objective | value |\n|---|---|\n");
  std::printf("| L_t(S_{t-1}) (before the step) | %s |\n", fixed(before, 6).c_str());
  std::printf("| L_t(Sbar_t) (after decay only) | %s |\n", fixed(at_sbar, 6).c_str());
  std::printf("| L_t(S_t) (after the write) | %s |\n", fixed(after, 6).c_str());
  std::printf("| L_t(S_t) - L_t(Sbar_t) = -\\|k_t\\|^2 \\|z_t - r_t\\|^2 | %s |\n",
              fixed(-k.squaredNorm() * residual.squaredNorm(), 6).c_str());
  std::printf("| \\|grad L_t(S_t)\\|_F | %s |\n", gradient.norm() < 1e-12 ? "0 (below 1e-12)" : "NOT ZERO");
  std::printf("| smallest rise L_t(S_t + P) - L_t(S_t) over 1000 random P | %s (> 0) |\n",
              smallest_rise > 0 ? "positive" : "NOT POSITIVE");
  std::printf("| rise equals \\|P\\|_F^2 (Hessian 2I) | %s |\n", worst_rise_error < 1e-9 ? "yes (to 1e-9)" : "NO");
  std::printf("| S_t equals gdr2::recurrent_forward's state | %s |\n\n",
              vs_reference < 1e-14 ? "yes (max difference below 1e-14)" : "NO");
  std::printf("S_t is the minimiser of L_t: %s\n\n", minimiser ? "confirmed" : "NOT CONFIRMED");
  return minimiser;
}

// ---- Part 2: associative memory with split values ------------------------------------------------------------
//
// N facts (key k_i, value v_i = (a_i, c_i)), d_k = 16, d_v = 8 (a: channels 0..3, c: channels 4..7). Keys are
// random unit vectors: they overlap (k_i . k_j != 0), and for N > d_k they cannot all be told apart. Fact i
// arrives as two tokens with the same key: token 1 carries (a_i, noise), token 2 carries (noise, c_i). After all
// 2N tokens the memory is read with q = k_i; the error is the mean over facts of |S^T k_i - v_i| / |v_i|.

constexpr Index kKeyDim = 16, kValueDim = 8, kHalf = kValueDim / 2;

struct Facts {
  Mat keys, values;  // N x d_k, N x d_v
  Mat tokens_v;      // 2N x d_v: what the tokens carry (half fact, half noise)
};

Facts make_facts(Index n, std::uint64_t seed) {
  Random rng(seed);
  Facts f;
  f.keys.resize(n, kKeyDim);
  f.values.resize(n, kValueDim);
  f.tokens_v.resize(2 * n, kValueDim);
  for (Index i = 0; i < n; ++i) {
    f.keys.row(i) = rng.unit_vector(kKeyDim).transpose();
    f.values.row(i) = rng.normal_vector(kValueDim).transpose();
    const Vec noise = rng.normal_vector(kValueDim);
    f.tokens_v.row(2 * i) << f.values.row(i).head(kHalf), noise.head(kHalf).transpose();
    f.tokens_v.row(2 * i + 1) << noise.tail(kHalf).transpose(), f.values.row(i).tail(kHalf);
  }
  return f;
}

double retrieval_error(const Mat& state, const Facts& f) {
  double sum = 0;
  for (Index i = 0; i < f.keys.rows(); ++i)
    sum += (state.transpose() * f.keys.row(i).transpose() - f.values.row(i).transpose()).norm() / f.values.row(i).norm();
  return sum / static_cast<double>(f.keys.rows());
}

Mat token_keys(const Facts& f) {  // 2N x d_k: each key twice
  Mat k(2 * f.keys.rows(), kKeyDim);
  for (Index i = 0; i < f.keys.rows(); ++i) k.row(2 * i) = k.row(2 * i + 1) = f.keys.row(i);
  return k;
}

constexpr double kScalarDecay = -0.02;  // Gated DeltaNet: alpha = exp(-0.02) = 0.980 per token

// Channel-wise decay for KDA: half the key channels keep (g = 0), half forget (g = -0.05).
double kda_decay(Index channel) { return channel < kKeyDim / 2 ? 0.0 : -0.05; }

enum Setting { deltanet, gated_deltanet, kda, gdr2_write_only, gdr2_erase_and_write, kSettings };
const char* setting_name(int s) {
  switch (s) {
    case deltanet: return "DeltaNet";
    case gated_deltanet: return "Gated DeltaNet";
    case kda: return "KDA";
    case gdr2_write_only: return "GDR-2, write gate only";
    case gdr2_erase_and_write: return "GDR-2, erase + write gates";
  }
  return "?";
}
const char* setting_gates(int s) {
  switch (s) {
    case deltanet: return "beta_t = 1, no decay";
    case gated_deltanet: return "beta_t = 1, alpha_t = 0.980 (scalar)";
    case kda: return "beta_t = 1, alpha = 1 on key channels 0-7, 0.951 on 8-15";
    case gdr2_write_only: return "b_t = 1; w_t = (1,1,1,1,0,0,0,0) on token 1, (0,0,0,0,1,1,1,1) on token 2; no decay";
    case gdr2_erase_and_write: return "as above, but b_t = 0 on token 2 (no erase); no decay";
  }
  return "?";
}

// The final state after storing the facts with setting s. The members run through their own implementations
// in gdr2/family.hpp; GDR-2 through gdr2::recurrent_forward.
Mat store(const Facts& f, int s) {
  const Index T = 2 * f.keys.rows();
  const Mat q = token_keys(f), k = q;
  const Mat s0 = Mat::Zero(kKeyDim, kValueDim);
  const Vec ones = Vec::Ones(T);
  switch (s) {
    case deltanet: return gdr2::deltanet_forward(gdr2::DeltaNetHead<double>{q, k, f.tokens_v, ones, s0, 1.0}).s;
    case gated_deltanet:
      return gdr2::gated_deltanet_forward(
                 gdr2::GatedDeltaNetHead<double>{q, k, f.tokens_v, Vec::Constant(T, kScalarDecay), ones, s0, 1.0})
          .s;
    case kda: {
      Mat g(T, kKeyDim);
      for (Index t = 0; t < T; ++t)
        for (Index d = 0; d < kKeyDim; ++d) g(t, d) = kda_decay(d);
      return gdr2::kda_forward(gdr2::KdaHead<double>{q, k, g, f.tokens_v, ones, s0, 1.0}).s;
    }
    default: {
      auto h = gdr2::Head<double>::zeros(T, kKeyDim, kValueDim);
      h.q = q;
      h.k = k;
      h.v = f.tokens_v;
      for (Index t = 0; t < T; ++t) {
        const bool first = t % 2 == 0;
        h.b.row(t).setConstant(first || s == gdr2_write_only ? 1.0 : 0.0);  // erase gate: protect on token 2
        h.w.row(t).head(kHalf).setConstant(first ? 1.0 : 0.0);              // write gate: select the real half
        h.w.row(t).tail(kHalf).setConstant(first ? 0.0 : 1.0);
      }
      return gdr2::recurrent_forward(h).s;
    }
  }
}

struct Curve {
  std::vector<Index> n;
  std::vector<std::vector<double>> error;  // [setting][point]
};

// Retrieval error against N, each point the mean over `repeats` independent draws of facts.
Curve retrieval_curve(const std::vector<Index>& ns, int repeats) {
  Curve c;
  c.n = ns;
  c.error.assign(kSettings, std::vector<double>(ns.size(), 0.0));
  for (size_t p = 0; p < ns.size(); ++p)
    for (int r = 0; r < repeats; ++r) {
      const Facts f = make_facts(ns[p], 1000003ull * static_cast<std::uint64_t>(ns[p]) + static_cast<std::uint64_t>(r));
      for (int s = 0; s < kSettings; ++s) c.error[s][p] += retrieval_error(store(f, s), f) / repeats;
    }
  return c;
}

void associative_memory(const Curve& curve, const std::vector<Index>& table_n) {
  std::printf("### 2. Associative memory: N facts, each value split over two tokens\n\n");
  std::printf("d_k = %lld, d_v = %lld, random unit keys (overlapping), fact i = (a_i, c_i) arrives as token 1 = "
              "(a_i, noise) then token 2 = (noise, c_i), same key. Read with q = k_i after all 2N tokens. Error = "
              "mean_i |S^T k_i - v_i| / |v_i|, averaged over 20 draws.\n\n",
              static_cast<long long>(kKeyDim), static_cast<long long>(kValueDim));
  std::printf("| setting | gates |\n|---|---|\n");
  for (int s = 0; s < kSettings; ++s) std::printf("| %s | %s |\n", setting_name(s), setting_gates(s));
  std::printf("\n| N |");
  for (int s = 0; s < kSettings; ++s) std::printf(" %s |", setting_name(s));
  std::printf("\n|---|");
  for (int s = 0; s < kSettings; ++s) std::printf("---|");
  std::printf("\n");
  for (Index n : table_n)
    for (size_t p = 0; p < curve.n.size(); ++p) {
      if (curve.n[p] != n) continue;
      std::printf("| %lld |", static_cast<long long>(n));
      for (int s = 0; s < kSettings; ++s) std::printf(" %s |", fixed(curve.error[s][p], 3).c_str());
      std::printf("\n");
    }
  std::printf("\n");
}

void write_plot(const Curve& curve, const std::string& dir) {
  const std::string data = dir + "/fast_weight_retrieval.dat", script = dir + "/fast_weight_retrieval.gp";
  std::ofstream d(data);
  d << "N";  // header row: gnuplot's columnheader() titles
  for (int s = 0; s < kSettings; ++s) d << " \"" << setting_name(s) << "\"";
  d << "\n";
  for (size_t p = 0; p < curve.n.size(); ++p) {
    d << curve.n[p];
    for (int s = 0; s < kSettings; ++s) d << " " << fixed(curve.error[s][p], 6);
    d << "\n";
  }
  std::ofstream g(script);
  g << "# gnuplot script written by examples/fast_weight (run from this directory: gnuplot fast_weight_retrieval.gp)\n"
    << "set terminal pngcairo size 760,440 font 'DejaVu Sans,10'\n"
    << "set output 'fast_weight_retrieval.png'\n"
    << "set title 'Retrieval error of N facts whose values arrive in two halves (d_k = 16, d_v = 8)'\n"
    << "set xlabel 'N (facts stored; 2N tokens)'\nset ylabel 'mean |S^T k_i - v_i| / |v_i|'\n"
    << "set key bottom right box opaque\nset grid\nset yrange [0:*]\n"
    << "set linetype 1 lc rgb '#7b3294'\nset linetype 2 lc rgb '#1b9e77'\nset linetype 3 lc rgb '#56b4e9'\n"
    << "set linetype 4 lc rgb '#e66101'\nset linetype 5 lc rgb '#b2182b'\n"
    << "plot for [i=2:" << kSettings + 1 << "] 'fast_weight_retrieval.dat' using 1:i with linespoints "
    << "title columnheader(i) lw 2 pt 7 ps 0.6\n";
  std::fprintf(stderr, "fast_weight: wrote %s and %s\n", data.c_str(), script.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  std::string plot_dir;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--plot-dir" && i + 1 < argc) plot_dir = argv[++i];
    else {
      std::fprintf(stderr, "usage: fast_weight [--plot-dir DIR]\n");
      return 2;
    }
  }
  const bool ok = one_token();
  std::vector<Index> ns;
  for (Index n = 1; n <= 48; n += (n < 8 ? 1 : 4)) ns.push_back(n);
  const Curve curve = retrieval_curve(ns, 20);
  associative_memory(curve, {1, 4, 8, 16, 24, 32, 48});
  if (!plot_dir.empty()) write_plot(curve, plot_dir);
  return ok ? 0 : 1;
}
