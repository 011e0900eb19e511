// gdr2-verify's command line: exit codes 0 / 1 / 2, the table, --json with every failing case, repro files and
// `gdr2-verify replay FILE` against the failing port, the correct port and a built-in target.
#include <gtest/gtest.h>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sys/wait.h>

namespace {

struct CliRun {
  int code = -1;
  std::string output;
};

CliRun run(const std::string& args) {
  const std::string cmd = std::string("'") + GDR2_VERIFY_EXE + "' " + args + " 2>&1";
  CliRun r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) r.output.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string temp(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("gdr2-verify-cli-" + std::to_string(getpid()) + "-" + name)).string();
}

std::string port(const std::string& args) { return std::string("\"'") + GDR2_EXAMPLE_PORT + "' " + args + "\""; }

bool contains(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

}  // namespace

TEST(VerifyCli, DefaultTargetsPassWithExitZero) {
  const CliRun r = run("--cases 4");
  EXPECT_EQ(r.code, 0) << r.output;
  for (const char* needle : {"target", "property", "worst", "median", "ref-float", "ref-bfloat16", "ref-half",
                             "collapse-kda", "split-state", "factor 8", "every property held"})
    EXPECT_TRUE(contains(r.output, needle)) << needle << "\n" << r.output;
}

TEST(VerifyCli, UsageErrorsExitTwo) {
  EXPECT_EQ(run("--target no-such-target").code, 2);
  EXPECT_EQ(run("--no-such-flag").code, 2);
  EXPECT_EQ(run("--contract fp8").code, 2);
  EXPECT_EQ(run("--target port").code, 2);  // no --port-cmd
  const CliRun crash = run("--cases 5 --port-cmd " + port("--misbehave crash"));
  EXPECT_EQ(crash.code, 2) << crash.output;
  EXPECT_TRUE(contains(crash.output, "ERROR port/forward")) << crash.output;
}

TEST(VerifyCli, CounterexampleExitsOneAndReplays) {
  const std::string dir = temp("repro"), json = temp("out.json");
  const CliRun r = run("--cases 50 --property forward --port-cmd " + port("--bug decay-after-edit") + " --repro-dir '" +
                    dir + "' --json '" + json + "'");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_TRUE(contains(r.output, "COUNTEREXAMPLE port/forward")) << r.output;
  std::ifstream in(json);
  const auto j = nlohmann::json::parse(in);
  EXPECT_EQ(j["exit_code"], 1);
  ASSERT_EQ(j["results"].size(), 1u);
  const auto& row = j["results"][0];
  EXPECT_EQ(row["status"], "FAIL");
  ASSERT_EQ(row["failures"].size(), 1u);
  const std::string file = row["failures"][0]["repro_file"];
  ASSERT_TRUE(std::filesystem::exists(file));
  EXPECT_GT(row["failures"][0]["tensors"][0]["ratio"].get<double>(), 8.0);
  // The stored command replays the buggy port: still a failure.
  const CliRun again = run("replay '" + file + "'");
  EXPECT_EQ(again.code, 1) << again.output;
  // The same case against the correct port and against the built-in reference: a pass.
  const CliRun fixed = run("replay '" + file + "' --port-cmd " + port(""));
  EXPECT_EQ(fixed.code, 0) << fixed.output;
  const CliRun reference = run("replay '" + file + "' --target ref-float");
  EXPECT_EQ(reference.code, 0) << reference.output;
  std::filesystem::remove_all(dir);
  std::filesystem::remove(json);
}

// An interrupted tool takes its port with it: the port runs in its own process group (so a hung port can be
// killed whole), and SIGINT / SIGTERM to gdr2-verify kill that group before the tool exits.
TEST(VerifyCli, InterruptedToolKillsItsPort) {
  const std::string pid_file = temp("port.pid");
  std::filesystem::remove(pid_file);
  for (const char* sig : {"INT", "TERM"}) {
    // The port shell writes its pid (\$\$: expanded by the port's shell, not the test's), then becomes the hanging
    // example port (exec keeps the pid).
    const std::string port_cmd = "echo \\$\\$ > '" + pid_file + "'; exec '" + std::string(GDR2_EXAMPLE_PORT) +
                                 "' --misbehave hang";
    // alive PID: the process exists and is not a zombie (killed but not reaped: a container's pid 1 may not reap).
    // The tool gets 5 s to act on the signal (and the port 3 s to go); a tool that ignores it is killed and
    // reported, so the test never hangs; the generous waits keep it steady on a loaded 2-core machine.
    const std::string script =
        "alive() { s=$(cut -d' ' -f3 /proc/$1/stat 2>/dev/null); [ -n \"$s\" ] && [ \"$s\" != Z ]; }; "
        "'" + std::string(GDR2_VERIFY_EXE) + "' --port-cmd \"" + port_cmd +
        "\" --timeout 120 --cases 3 >/dev/null 2>&1 & v=$!; "
        "for i in $(seq 100); do [ -s '" + pid_file + "' ] && break; sleep 0.05; done; sleep 0.3; "
        "kill -" + sig + " $v; for i in $(seq 100); do alive $v || break; sleep 0.05; done; "
        "if alive $v; then kill -9 $v; echo TOOL-IGNORED-THE-SIGNAL; fi; wait $v; "
        "p=$(cat '" + pid_file + "'); for i in $(seq 60); do alive $p || break; sleep 0.05; done; "
        "if alive $p; then kill -9 $p; echo ALIVE; else echo GONE; fi";
    FILE* p = popen(script.c_str(), "r");  // through /bin/sh -c
    ASSERT_NE(p, nullptr);
    std::array<char, 256> buf{};
    std::string out;
    while (size_t n = fread(buf.data(), 1, buf.size(), p)) out.append(buf.data(), n);
    pclose(p);
    EXPECT_EQ(out, "GONE\n") << "SIG" << sig << " to gdr2-verify with a hanging port";
    std::filesystem::remove(pid_file);
  }
}
