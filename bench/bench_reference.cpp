// Reference forward timings: double at the paper's head shape, multiprecision at a small shape.
#include <boost/multiprecision/cpp_bin_float.hpp>
#include <boost/multiprecision/eigen.hpp>
#include <gdr2/reference.hpp>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "bench.hpp"
#include "problems.hpp"

namespace {

template <class Scalar>
gdr2::Batch<Scalar> cast_batch(const gdr2::Batch<double>& x) {
  gdr2::Batch<Scalar> y;
  y.B = x.B; y.T = x.T; y.H = x.H; y.HV = x.HV; y.K = x.K; y.V = x.V; y.cu_seqlens = x.cu_seqlens;
  auto conv = [](const std::vector<double>& a) {
    std::vector<Scalar> out(a.size());
    for (size_t i = 0; i < a.size(); ++i) out[i] = gdr2::from_double<Scalar>(a[i]);
    return out;
  };
  y.q = conv(x.q); y.k = conv(x.k); y.g = conv(x.g); y.b = conv(x.b);
  y.v = conv(x.v); y.w = conv(x.w); y.h0 = conv(x.h0);
  y.scale = gdr2::from_double<Scalar>(x.scale);
  return y;
}

void set_threads(int n) {
#ifdef _OPENMP
  omp_set_num_threads(n);
#else
  (void)n;
#endif
}

template <class Scalar>
void time_forward(gdr2_bench::Context& ctx, const char* scalar_name, gdr2::Form form, gdr2::Index B, gdr2::Index T,
                  gdr2::Index H, gdr2::Index K) {
  const auto batch = cast_batch<Scalar>(gdr2_test::random_batch(7, B, T, H, H, K, K));
  const std::string form_name = form == gdr2::Form::recurrent ? "recurrent_forward" : "chunkwise_forward";
  char shape[64];
  std::snprintf(shape, sizeof shape, "B=%ld T=%ld H=%ld K=V=%ld", long(B), long(T), long(H), long(K));
  for (int threads : ctx.threads) {
    set_threads(threads);
    const double s = gdr2_bench::median_seconds(ctx.repeats, [&] { (void)gdr2::batched_forward(batch, form, 64); });
    gdr2_bench::Row row;
    row.benchmark = "reference/" + form_name + "/" + scalar_name;
    row.shape = shape;
    row.config = "threads=" + std::to_string(threads);
    row.seconds = s;
    row.tokens_per_second = double(B * T) / s;
    ctx.report(row);
  }
}

}  // namespace

GDR2_BENCHMARK("reference/forward/double", "recurrent and chunkwise forward in double, paper head shape") {
  const gdr2::Index T = ctx.quick ? 256 : 4096;
  time_forward<double>(ctx, "double", gdr2::Form::recurrent, 1, T, 16, 128);
  time_forward<double>(ctx, "double", gdr2::Form::chunkwise, 1, T, 16, 128);
}

GDR2_BENCHMARK("reference/forward/cpp_bin_float_50", "recurrent and chunkwise forward in cpp_bin_float_50, small shape") {
  using mp50 = boost::multiprecision::cpp_bin_float_50;
  const gdr2::Index T = ctx.quick ? 32 : 128;
  time_forward<mp50>(ctx, "cpp_bin_float_50", gdr2::Form::recurrent, 1, T, 2, 32);
  time_forward<mp50>(ctx, "cpp_bin_float_50", gdr2::Form::chunkwise, 1, T, 2, 32);
}
