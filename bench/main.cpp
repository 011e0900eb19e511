// gdr2-bench: runs the registered benchmarks (bench_*.cpp, bench_*.cu) and prints a table.
//   gdr2-bench [--filter TEXT] [--repeats N] [--threads 1,2] [--quick] [--json FILE] [--list]
#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include "bench.hpp"

int main(int argc, char** argv) {
  CLI::App app{"gdr2-bench: timings of the gdr2 reference and kernels"};
  std::string filter, json_path;
  bool list = false;
  gdr2_bench::Context ctx;
  app.add_option("--filter", filter, "run only benchmarks whose name contains this text");
  app.add_option("--repeats", ctx.repeats, "timed repetitions per measurement (the median is reported)")
      ->check(CLI::PositiveNumber);
  app.add_option("--threads", ctx.threads, "OpenMP thread counts for the CPU reference")->delimiter(',');
  app.add_flag("--quick", ctx.quick, "small shapes (a smoke run of every benchmark)");
  app.add_option("--json", json_path, "also write the rows as JSON to this file");
  app.add_flag("--list", list, "list the benchmarks and exit");
  CLI11_PARSE(app, argc, argv);

  int ran = 0;
  for (const auto& b : gdr2_bench::registry()) {
    if (!filter.empty() && b.name.find(filter) == std::string::npos) continue;
    if (list) { std::printf("%-40s %s\n", b.name.c_str(), b.description.c_str()); continue; }
    std::fprintf(stderr, "running %s ...\n", b.name.c_str());
    try {
      b.run(ctx);
      ++ran;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "gdr2-bench: %s failed: %s\n", b.name.c_str(), e.what());
      return 2;
    }
  }
  if (list) return 0;
  if (ran == 0) {
    std::fprintf(stderr, "gdr2-bench: no benchmark matches '%s' (try --list)\n", filter.c_str());
    return 2;
  }
  std::printf("%-44s %-28s %-12s %12s %14s %10s %8s  %s\n", "benchmark", "shape", "config", "median ms",
              "tokens/s", "GB/s", "floor", "note");
  for (const auto& r : ctx.rows) {
    auto opt = [](double x, const char* fmt) {
      char buf[32];
      if (x > 0) std::snprintf(buf, sizeof buf, fmt, x); else std::snprintf(buf, sizeof buf, "-");
      return std::string(buf);
    };
    std::printf("%-44s %-28s %-12s %12.3f %14s %10s %8s  %s\n", r.benchmark.c_str(), r.shape.c_str(),
                r.config.c_str(), r.seconds * 1e3, opt(r.tokens_per_second, "%.4g").c_str(),
                opt(r.gb_per_second, "%.1f").c_str(), opt(r.floor_fraction, "%.2f").c_str(), r.note.c_str());
  }
  if (!json_path.empty()) {
    nlohmann::json rows = nlohmann::json::array();
    for (const auto& r : ctx.rows)
      rows.push_back({{"benchmark", r.benchmark}, {"shape", r.shape}, {"config", r.config}, {"seconds", r.seconds},
                      {"tokens_per_second", r.tokens_per_second}, {"gb_per_second", r.gb_per_second},
                      {"floor_fraction", r.floor_fraction}, {"note", r.note}});
    std::ofstream(json_path) << rows.dump(2) << "\n";
  }
  return 0;
}
