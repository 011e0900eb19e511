#include "report.hpp"

#include <map>
#include <set>

namespace gdr2v {

namespace {
std::string ratio_text(const PropertyResult& r, double x) {
  if (r.status == "skipped" || r.status == "info" || r.cases == 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", x);
  return buf;
}
}  // namespace

void print_table(std::FILE* out, const std::vector<PropertyResult>& rows) {
  std::fprintf(out, "%-20s %-14s %-8s %6s %7s %10s %10s %8s  %s\n", "target", "property", "contract", "cases",
               "passed", "worst", "median", "time", "result");
  for (const auto& r : rows) {
    std::string result = r.status;
    if (!r.note.empty()) result += " (" + r.note + ")";
    std::fprintf(out, "%-20s %-14s %-8s %6d %7d %10s %10s %7.1fs  %s\n", r.target.c_str(), r.property.c_str(),
                 r.contract.c_str(), r.cases, r.passed, ratio_text(r, r.worst).c_str(), ratio_text(r, r.median).c_str(),
                 r.seconds, result.c_str());
  }
}

void print_tolerances(std::FILE* out, const std::vector<PropertyResult>& rows) {
  std::set<std::string> seen;
  std::fprintf(out, "ratio = err / max(baseline, floor), err = ||x - x_ref|| / ||x_ref|| against the double reference;"
                    " pass iff ratio <= factor (docs/ports.md)\n");
  for (const auto& r : rows) {
    if (!seen.insert(r.contract).second) continue;
    const auto c = parse_contract(r.contract);
    if (!c) continue;
    const Tolerance t = tolerance_of(*c);
    std::fprintf(out, "  contract %-5s factor %g, floor %.3g, baseline: %s\n", r.contract.c_str(), t.factor, t.floor,
                 t.baseline_algorithm);
  }
}

void print_failures(std::FILE* out, const std::vector<PropertyResult>& rows) {
  for (const auto& r : rows) {
    if (r.status == "error") std::fprintf(out, "\nERROR %s/%s: %s\n", r.target.c_str(), r.property.c_str(), r.note.c_str());
    for (const auto& f : r.failures) {
      std::fprintf(out, "\nCOUNTEREXAMPLE %s/%s (contract %s), shrunk in %d steps to:\n  %s\n  %s\n", r.target.c_str(),
                   r.property.c_str(), r.contract.c_str(), f.shrink_steps, f.spec.c_str(), f.eval.message.c_str());
      for (const auto& t : f.eval.tensors)
        std::fprintf(out, "    %-6s err %.3e  baseline %.3e  ratio %.3g\n", t.name.c_str(), t.err, t.baseline, t.ratio);
      if (!f.repro_path.empty()) std::fprintf(out, "  repro file: %s\n", f.repro_path.c_str());
      if (!f.replay_command.empty()) std::fprintf(out, "  replay:     %s\n", f.replay_command.c_str());
    }
  }
}

nlohmann::json to_json(const std::vector<PropertyResult>& rows) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& r : rows) {
    nlohmann::json row = {{"target", r.target}, {"property", r.property}, {"contract", r.contract},
                          {"status", r.status}, {"cases", r.cases},       {"passed", r.passed},
                          {"seconds", r.seconds}, {"factor", r.factor},   {"floor", r.floor},
                          {"seed", r.seed},     {"note", r.note}};
    if (r.status != "skipped" && r.status != "info" && r.cases > 0) {
      row["worst_ratio"] = r.worst;
      row["median_ratio"] = r.median;
    }
    nlohmann::json failures = nlohmann::json::array();
    for (const auto& f : r.failures) {
      nlohmann::json tensors = nlohmann::json::array();
      for (const auto& t : f.eval.tensors)
        tensors.push_back({{"name", t.name}, {"err", t.err}, {"baseline", t.baseline}, {"ratio", t.ratio}});
      failures.push_back({{"case", f.spec}, {"message", f.eval.message}, {"shrink_steps", f.shrink_steps},
                          {"tensors", tensors}, {"repro_file", f.repro_path}, {"replay", f.replay_command}});
    }
    row["failures"] = failures;
    j.push_back(row);
  }
  return j;
}

int exit_code(const std::vector<PropertyResult>& rows) {
  bool failed = false;
  for (const auto& r : rows) {
    if (r.status == "error") return 2;
    if (r.status == "FAIL") failed = true;
  }
  return failed ? 1 : 0;
}

}  // namespace gdr2v
