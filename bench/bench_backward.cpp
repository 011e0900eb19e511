// Reference backward timings: double at the paper's head shape (recurrent and chunkwise backward).
#include <gdr2/backward.hpp>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "bench.hpp"
#include "problems.hpp"

GDR2_BENCHMARK("reference/backward/double", "recurrent and chunkwise backward in double, paper head shape") {
  const gdr2::Index B = 1, T = ctx.quick ? 256 : 4096, H = 16, K = 128;
  const auto x = gdr2_test::random_batch(7, B, T, H, H, K, K);
  gdr2_test::Sampler s(8);
  std::vector<double> dout(x.v.size()), dht(x.h0.size());
  for (auto& e : dout) e = s.normal();
  for (auto& e : dht) e = s.normal();
  char shape[64];
  std::snprintf(shape, sizeof shape, "B=%ld T=%ld H=%ld K=V=%ld", long(B), long(T), long(H), long(K));
  for (const auto form : {gdr2::Form::recurrent, gdr2::Form::chunkwise}) {
    for (int threads : ctx.threads) {
#ifdef _OPENMP
      omp_set_num_threads(threads);
#endif
      const double sec = gdr2_bench::median_seconds(ctx.repeats, [&] { (void)gdr2::batched_backward(x, dout, dht, form, 64); });
      gdr2_bench::Row row;
      row.benchmark = std::string("reference/") + (form == gdr2::Form::recurrent ? "recurrent" : "chunkwise") + "_backward/double";
      row.shape = shape;
      row.config = "threads=" + std::to_string(threads);
      row.seconds = sec;
      row.tokens_per_second = double(B * T) / sec;
      ctx.report(row);
    }
  }
}
