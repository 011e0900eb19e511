// gdr2-verify, first version: checks the reference forms against each other and prints a table.
// (The property-based tool with targets, tolerances, shrinking and the port protocol replaces this.)
#include <CLI/CLI.hpp>
#include <cstdio>
#include <random>
#include <gdr2/reference.hpp>

namespace {
gdr2::Head<double> random_head(std::mt19937_64& rng, gdr2::Index T, gdr2::Index dk, gdr2::Index dv) {
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> unit(0, 1);
  auto h = gdr2::Head<double>::zeros(T, dk, dv);
  for (gdr2::Index t = 0; t < T; ++t) {
    gdr2::Vector<double> q(dk), k(dk);
    for (auto& x : q) x = normal(rng);
    for (auto& x : k) x = normal(rng);
    h.q.row(t) = q.normalized().transpose();
    h.k.row(t) = k.normalized().transpose();
    for (gdr2::Index d = 0; d < dk; ++d) { h.g(t, d) = -0.1 - 4.9 * unit(rng); h.b(t, d) = unit(rng); }
    for (gdr2::Index d = 0; d < dv; ++d) { h.v(t, d) = normal(rng); h.w(t, d) = unit(rng); }
  }
  return h;
}
template <class S>
double rel_err(const gdr2::Head<double>& h) {
  const auto exact = gdr2::recurrent_forward(h);
  const auto low = gdr2::chunkwise_forward(h.cast<S>(), 64);
  return (gdr2::cast_matrix<double>(low.o) - exact.o).norm() / exact.o.norm();
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"gdr2-verify: the reference forms checked against each other"};
  unsigned long long seed = 1;
  app.add_option("--seed", seed, "random seed");
  CLI11_PARSE(app, argc, argv);
  std::mt19937_64 rng(seed);
  const auto h = random_head(rng, 200, 32, 48);
  const double chunk_vs_recurrent =
      (gdr2::chunkwise_forward(h, 64).o - gdr2::recurrent_forward(h).o).norm() / gdr2::recurrent_forward(h).o.norm();
  std::printf("%-34s %12s\n", "check", "rel. error");
  std::printf("%-34s %12.3e\n", "chunkwise(double) vs recurrent", chunk_vs_recurrent);
  std::printf("%-34s %12.3e\n", "chunkwise(float) vs recurrent", rel_err<float>(h));
  std::printf("%-34s %12.3e\n", "chunkwise(bfloat16) vs recurrent", rel_err<Eigen::bfloat16>(h));
  std::printf("%-34s %12.3e\n", "chunkwise(half) vs recurrent", rel_err<Eigen::half>(h));
  return chunk_vs_recurrent < 1e-12 ? 0 : 1;
}
