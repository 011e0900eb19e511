#pragma once
// gdr2-bench registry: each bench_*.cpp / bench_*.cu file registers named benchmarks with
// GDR2_BENCHMARK(name, "description") { ... ctx.report(...); } and main.cpp runs the selected ones.
#include <algorithm>
#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace gdr2_bench {

struct Row {
  std::string benchmark;  // e.g. "reference/recurrent_forward/double"
  std::string shape;      // e.g. "B=1 T=4096 H=16 K=V=128"
  std::string config;     // e.g. "threads=2"
  double seconds = 0;     // median wall time of one call
  double tokens_per_second = 0;
  double gb_per_second = 0;     // 0 when not meaningful
  double floor_fraction = 0;    // memory floor time / measured time, 0 when not meaningful
  std::string note;
};

struct Context {
  int repeats = 3;              // timed repetitions (median reported)
  std::vector<int> threads{1, 2};
  bool quick = false;           // smaller shapes (used by the test that runs every benchmark once)
  std::vector<Row> rows;
  void report(Row r) { rows.push_back(std::move(r)); }
};

struct Benchmark {
  std::string name, description;
  std::function<void(Context&)> run;
};

inline std::vector<Benchmark>& registry() {
  static std::vector<Benchmark> all;
  return all;
}

struct Registrar {
  Registrar(std::string name, std::string description, std::function<void(Context&)> run) {
    registry().push_back({std::move(name), std::move(description), std::move(run)});
  }
};

// Median wall-clock seconds of `repeats` calls of f (after one untimed warm-up call).
template <class F>
double median_seconds(int repeats, F&& f) {
  f();
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    f();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace gdr2_bench

#define GDR2_BENCH_CAT2(a, b) a##b
#define GDR2_BENCH_CAT(a, b) GDR2_BENCH_CAT2(a, b)
#define GDR2_BENCHMARK(name, description)                                                       \
  static void GDR2_BENCH_CAT(gdr2_bench_fn_, __LINE__)(::gdr2_bench::Context&);                 \
  static ::gdr2_bench::Registrar GDR2_BENCH_CAT(gdr2_bench_reg_, __LINE__)(                     \
      name, description, GDR2_BENCH_CAT(gdr2_bench_fn_, __LINE__));                             \
  static void GDR2_BENCH_CAT(gdr2_bench_fn_, __LINE__)(::gdr2_bench::Context & ctx)
