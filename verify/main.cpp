// gdr2-verify: property-based verification of GDR-2 kernels (built-in reference targets, CUDA kernels, external
// ports) against the gdr2 reference, with calibrated tolerances, shrinking, repro files and replay.
// Exit code 0: every property held; 1: a counterexample was found; 2: usage or infrastructure error.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <unistd.h>
#include "src/port_client.hpp"
#include "src/report.hpp"

namespace {

using namespace gdr2v;

int usage_error(const std::string& message) {
  std::fprintf(stderr, "gdr2-verify: %s\n", message.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"gdr2-verify: checks GDR-2 kernels against the gdr2 reference (docs/ports.md)"};
  app.fallthrough();
  std::vector<std::string> targets;
  std::vector<std::string> properties;
  RunOptions options;
  std::string profile = "small", contract, json_path, port_cmd;
  double timeout_s = 60;
  app.add_option("--target", targets, "targets to check: ref-float ref-bfloat16 ref-half cuda-recurrent cuda-chunk-fast "
                                      "cuda-chunk-accurate port, or all (default: every built-in target available here; "
                                      "with --port-cmd, the port)");
  app.add_option("--cases", options.cases, "cases per property (default 100)")->check(CLI::Range(1, 1000000));
  app.add_option("--seed", options.seed, "random seed (the run is a function of it)");
  app.add_option("--profile", profile, "problem sizes: small (T <= 160), paper (T <= 1100, d 64/128), large (T <= 4096)")
      ->check(CLI::IsMember({"small", "paper", "large"}));
  app.add_option("--contract", contract, "precision contract, overriding each target's own: fp32 tf32 bf16 fp16")
      ->check(CLI::IsMember({"fp32", "tf32", "bf16", "fp16"}));
  app.add_flag("--grad", options.grad, "also check gradients (targets with a backward)");
  app.add_option("--port-cmd", port_cmd, "an external port, started once through /bin/sh -c (docs/ports.md)");
  app.add_option("--timeout", timeout_s, "seconds a port may take per case (default 60)")->check(CLI::PositiveNumber);
  app.add_option("--json", json_path, "write the results and every failing case as JSON");
  app.add_option("--repro-dir", options.repro_dir, "where shrunk failures are written (default gdr2-verify-failures)");
  app.add_option("--property", properties, "only these properties: forward grad collapse-kda collapse-gdn split-state "
                                           "deterministic");
  app.add_option("--shrink-budget", options.shrink_budget_s, "seconds spent shrinking one failure (default 60)");
  auto* replay_cmd = app.add_subcommand("replay", "re-run a repro file's case against a target");
  std::string replay_file;
  replay_cmd->add_option("FILE", replay_file, "a .safetensors repro file written by gdr2-verify")->required();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  options.profile = *parse_profile(profile);
  if (!contract.empty()) options.contract = parse_contract(contract);
  options.port_cmd = port_cmd;
  options.progress = isatty(STDERR_FILENO) != 0;
  const std::string self = argv[0];
  options.replay_prefix = self.find('/') != std::string::npos ? std::filesystem::absolute(self).string() : self;
  for (const auto& p : properties) {
    const auto parsed = parse_property(p);
    if (!parsed) return usage_error("unknown property '" + p + "'");
    options.only.push_back(*parsed);
  }

  // ---- which targets ----
  std::string cuda_why;
  const auto cuda_names = cuda_target_names(&cuda_why);
  std::vector<std::string> available = reference_target_names();
  available.insert(available.end(), cuda_names.begin(), cuda_names.end());
  if (!port_cmd.empty()) available.push_back("port");
  std::vector<std::string> chosen;
  if (replay_cmd->parsed()) {
    if (targets.empty()) {
      const SafeTensors f = SafeTensors::load(replay_file);
      targets.push_back(f.meta("target", "ref-float"));
      if (targets.back() != "port" && targets.back().rfind("ref-", 0) != 0 && targets.back().rfind("cuda-", 0) != 0)
        targets.back() = "port";
      if (targets.back() == "port" && port_cmd.empty()) port_cmd = f.meta("port_cmd");
    }
    if (targets.size() != 1) return usage_error("replay takes one --target");
    chosen = targets;
  } else if (targets.empty()) {
    chosen = port_cmd.empty() ? available : std::vector<std::string>{"port"};
  } else {
    for (const auto& t : targets) {
      if (t == "all") chosen.insert(chosen.end(), available.begin(), available.end());
      else chosen.push_back(t);
    }
  }
  std::vector<std::unique_ptr<Target>> instances;
  for (const auto& t : chosen) {
    if (auto r = make_reference_target(t)) { instances.push_back(std::move(r)); continue; }
    if (t.rfind("cuda-", 0) == 0) {
      if (std::find(cuda_names.begin(), cuda_names.end(), t) == cuda_names.end())
        return usage_error("target '" + t + "' is not available: " + cuda_why);
      instances.push_back(make_cuda_target(t));
      continue;
    }
    if (t == "port") {
      if (port_cmd.empty()) return usage_error("target 'port' needs --port-cmd \"CMD\"");
      PortOptions po;
      po.command = port_cmd;
      po.timeout_s = timeout_s;
      try {
        instances.push_back(make_port_target(po));
      } catch (const target_error& e) {
        std::fprintf(stderr, "gdr2-verify: cannot start the port: %s\n", e.what());
        return 2;
      }
      continue;
    }
    std::string names;
    for (const auto& a : reference_target_names()) names += " " + a;
    return usage_error("unknown target '" + t + "' (known:" + names +
                       " cuda-recurrent cuda-chunk-fast cuda-chunk-accurate port all)");
  }

  std::vector<PropertyResult> rows;
  if (replay_cmd->parsed()) {
    rows.push_back(replay(*instances.front(), replay_file, options.contract));
  } else {
    std::printf("gdr2-verify: profile %s, %d cases per property, seed %llu%s\n", profile.c_str(), options.cases,
                static_cast<unsigned long long>(options.seed), options.grad ? ", with gradients" : "");
    if (cuda_names.empty()) std::printf("CUDA targets: none (%s)\n", cuda_why.c_str());
    std::fflush(stdout);
    for (auto& t : instances) {
      auto r = run_target(*t, options);
      rows.insert(rows.end(), r.begin(), r.end());
    }
  }
  print_table(stdout, rows);
  print_tolerances(stdout, rows);
  print_failures(stdout, rows);
  const int code = exit_code(rows);
  if (!json_path.empty()) {
    nlohmann::json j = {{"tool", "gdr2-verify"}, {"format", 1}, {"profile", profile}, {"cases", options.cases},
                        {"seed", options.seed},  {"grad", options.grad}, {"exit_code", code},
                        {"results", to_json(rows)}};
    if (replay_cmd->parsed()) j["replay"] = replay_file;
    std::ofstream out(json_path);
    out << j.dump(2) << "\n";
    if (!out) return usage_error("cannot write '" + json_path + "'");
  }
  std::printf("%s\n", code == 0 ? "gdr2-verify: every property held" : code == 1 ? "gdr2-verify: COUNTEREXAMPLE found"
                                                                                  : "gdr2-verify: ERROR (see above)");
  return code;
} catch (const std::exception& e) {
  std::fprintf(stderr, "gdr2-verify: %s\n", e.what());
  return 2;
}
