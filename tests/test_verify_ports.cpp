// The port protocol end to end with the example port (verify/ports/example_port.cpp):
//  - protocol errors (crash, hang, garbage, wrong shape, missing tensor, error answer, bad handshake) each give a
//    clear error naming the case, never a numerical pass, and never hang;
//  - mutation tests: every seeded bug is caught with a shrunk case whose repro file replays as a failure and
//    passes against the correct port; the correct port passes 500+ cases;
//  - the Python/numpy port (skipped when numpy is missing).
#include <gtest/gtest.h>
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include "port_client.hpp"
#include "properties.hpp"
#include "report.hpp"

using namespace gdr2v;

namespace {

std::string example_port(const std::string& args = "") { return std::string("'") + GDR2_EXAMPLE_PORT + "' " + args; }

std::string repro_dir() {
  return (std::filesystem::temp_directory_path() / ("gdr2-verify-test-repro-" + std::to_string(getpid()))).string();
}

RunOptions options(std::vector<Property> only, int cases, const std::string& port_cmd) {
  RunOptions o;
  o.cases = cases;
  o.only = std::move(only);
  o.repro_dir = repro_dir();
  o.port_cmd = port_cmd;
  o.shrink_budget_s = 60;
  return o;
}

std::unique_ptr<Target> port(const std::string& cmd, double timeout_s = 30) {
  PortOptions p;
  p.command = cmd;
  p.timeout_s = timeout_s;
  return make_port_target(p);
}

bool contains(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

}  // namespace

// ---- protocol errors ----------------------------------------------------------------------------------------

struct ProtocolCase {
  const char* misbehave;
  const char* expected;  // a phrase the error must contain
};

void PrintTo(const ProtocolCase& c, std::ostream* os) { *os << "--misbehave " << c.misbehave; }

class VerifyProtocolErrors : public ::testing::TestWithParam<ProtocolCase> {};

TEST_P(VerifyProtocolErrors, GiveAClearErrorNamingTheCase) {
  const auto& p = GetParam();
  const std::string cmd = example_port(std::string("--misbehave ") + p.misbehave + " --after 2");
  auto target = port(cmd, 2.0);  // a 2 s per-case timeout keeps the hang case short
  const auto start = std::chrono::steady_clock::now();
  const auto rows = run_target(*target, options({Property::forward}, 10, cmd));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].status, "error") << rows[0].note;
  EXPECT_TRUE(contains(rows[0].note, p.expected)) << rows[0].note;
  EXPECT_TRUE(contains(rows[0].note, "case {seed=")) << "the error must name the case: " << rows[0].note;
  EXPECT_EQ(rows[0].cases, 2) << "the two cases before the misbehaviour are counted, the bad one is not a pass";
  EXPECT_EQ(exit_code(rows), 2);
  EXPECT_LT(seconds, 20.0) << "never hang";
}

INSTANTIATE_TEST_SUITE_P(
    Port, VerifyProtocolErrors,
    ::testing::Values(ProtocolCase{"crash", "closed its stdout (exited or crashed)"},
                      ProtocolCase{"hang", "no answer within 2 s"},
                      ProtocolCase{"garbage", "answered garbage 'hello, I am not a protocol answer'"},
                      ProtocolCase{"wrong-shape", "output tensor 'o' has shape"},
                      ProtocolCase{"missing-tensor", "missing tensor 'ht'"},
                      ProtocolCase{"error", "reported an error on case"}),
    [](const auto& info) {
      std::string n = info.param.misbehave;
      std::replace(n.begin(), n.end(), '-', '_');
      return n;
    });

TEST(VerifyProtocol, HandshakeFailuresAreClear) {
  try {
    port(example_port("--misbehave bad-handshake"));
    ADD_FAILURE() << "no error";
  } catch (const target_error& e) {
    EXPECT_TRUE(contains(e.what(), "must start with 'gdr2-port 1'")) << e.what();
  }
  try {
    port(example_port("--misbehave hang-handshake"), 1.0);
    ADD_FAILURE() << "no error";
  } catch (const target_error& e) {
    EXPECT_TRUE(contains(e.what(), "no answer within 1 s while waiting for its handshake")) << e.what();
  }
  try {
    port("/nonexistent/gdr2-port-binary");
    ADD_FAILURE() << "no error";
  } catch (const target_error& e) {
    EXPECT_TRUE(contains(e.what(), "exit status 127")) << e.what();
    EXPECT_TRUE(contains(e.what(), "not found")) << "the shell's message is passed on: " << e.what();
  }
}

// ---- mutation tests -------------------------------------------------------------------------------------------

struct Mutant {
  const char* bug;
  Property property;
  int max_T;  // the shrunk case is at most this long (shows shrinking worked)
};

void PrintTo(const Mutant& m, std::ostream* os) { *os << "--bug " << m.bug; }

class VerifyMutants : public ::testing::TestWithParam<Mutant> {};

TEST_P(VerifyMutants, AreCaughtWithAShrunkCase) {
  const auto& m = GetParam();
  const std::string cmd = example_port(std::string("--bug ") + m.bug);
  auto target = port(cmd);
  RunOptions o = options({m.property}, 200, cmd);
  o.grad = m.property == Property::grad;
  const auto rows = run_target(*target, o);
  ASSERT_EQ(rows.size(), 1u);
  ASSERT_EQ(rows[0].status, "FAIL") << m.bug << " was not caught: " << rows[0].note;
  EXPECT_EQ(exit_code(rows), 1);
  ASSERT_EQ(rows[0].failures.size(), 1u);
  const Failure& f = rows[0].failures[0];
  EXPECT_FALSE(f.eval.pass);
  EXPECT_GT(f.eval.ratio, 8.0);
  EXPECT_GT(f.shrink_steps, 0);
  // The shrunk case: short, and (except for the chunk bug) as small as the generators go.
  const auto t_at = f.spec.find(" T=");
  ASSERT_NE(t_at, std::string::npos);
  EXPECT_LE(std::stoi(f.spec.substr(t_at + 3)), m.max_T) << f.spec;
  // The repro file replays as a failure against the buggy port and as a pass against the correct one.
  ASSERT_TRUE(std::filesystem::exists(f.repro_path)) << f.repro_path;
  const PropertyResult again = replay(*target, f.repro_path, std::nullopt);
  EXPECT_EQ(again.status, "FAIL");
  auto correct = port(example_port());
  const PropertyResult fixed = replay(*correct, f.repro_path, std::nullopt);
  EXPECT_EQ(fixed.status, "pass") << (fixed.failures.empty() ? fixed.note : fixed.failures[0].eval.message);
  std::filesystem::remove(f.repro_path);
}

INSTANTIATE_TEST_SUITE_P(Port, VerifyMutants,
                         ::testing::Values(Mutant{"erase-k", Property::forward, 2},
                                           Mutant{"write-gate-on-read", Property::forward, 2},
                                           Mutant{"decay-after-edit", Property::forward, 2},
                                           Mutant{"chunk-off-by-one", Property::forward, 65},
                                           Mutant{"scalar-postscale", Property::grad, 2},
                                           // dh0 is compared only when the case has h0 (docs/ports.md): this
                                           // shows that dropping it is still caught.
                                           Mutant{"drop-dh0", Property::grad, 2}),
                         [](const auto& info) {
                           std::string n = info.param.bug;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

// 500 forward cases in fp32, then 60 of each other property in bf16: 800 cases, none may fail.
TEST(VerifyMutants, CorrectPortPasses500ForwardCasesAndEveryProperty) {
  const std::string cmd = example_port();
  auto target = port(cmd);
  RunOptions o = options({Property::forward}, 500, cmd);
  const auto forward = run_target(*target, o);
  ASSERT_EQ(forward.size(), 1u);
  EXPECT_EQ(forward[0].status, "pass") << (forward[0].failures.empty() ? forward[0].note : forward[0].failures[0].eval.message);
  EXPECT_EQ(forward[0].cases, 500);
  EXPECT_EQ(forward[0].passed, 500);
  // The other properties, fewer cases each, in bf16 (the port rounds its outputs to bf16).
  o.only = {Property::kda, Property::gated_deltanet, Property::split, Property::deterministic, Property::grad};
  o.cases = 60;
  o.grad = true;
  o.contract = Contract::bf16;
  for (const auto& r : run_target(*target, o)) {
    if (r.status == "skipped") continue;
    EXPECT_TRUE(r.status == "pass" || r.status == "info") << r.property << ": " << r.status << " " << r.note
        << (r.failures.empty() ? "" : r.failures[0].eval.message);
    if (r.status == "info") EXPECT_EQ(r.passed, r.cases) << "the example port is deterministic";
  }
}

// ---- the Python/numpy port -------------------------------------------------------------------------------------

TEST(VerifyPythonPort, NumpyPortPasses) {
  if (std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "skipped: numpy not available for /usr/bin/python3 (apt-get install python3-numpy)";
  const std::string cmd = std::string("/usr/bin/python3 '") + GDR2_PORTS_DIR + "/numpy_port.py'";
  auto target = port(cmd);
  RunOptions o = options({Property::forward, Property::split, Property::kda}, 40, cmd);
  for (Contract c : {Contract::fp32, Contract::bf16}) {
    o.contract = c;
    for (const auto& r : run_target(*target, o))
      EXPECT_EQ(r.status, "pass") << r.property << " " << name(c) << ": " << r.note
                                  << (r.failures.empty() ? "" : r.failures[0].eval.message);
  }
  // Its gradients.
  o.only = {Property::grad};
  o.grad = true;
  o.contract = Contract::fp32;
  o.cases = 30;
  for (const auto& r : run_target(*target, o))
    EXPECT_EQ(r.status, "pass") << r.note << (r.failures.empty() ? "" : r.failures[0].eval.message);
}

TEST(VerifyPythonPort, NumpyPortWithSeededBugIsCaught) {
  if (std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "skipped: numpy not available for /usr/bin/python3 (apt-get install python3-numpy)";
  const std::string cmd = std::string("/usr/bin/python3 '") + GDR2_PORTS_DIR + "/numpy_port.py' --bug erase-k";
  auto target = port(cmd);
  const auto rows = run_target(*target, options({Property::forward}, 50, cmd));
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].status, "FAIL");
}

TEST(VerifyProtocol, ContractOutsideTheHandshakeIsAnErrorNotASkip) {
  const std::string cmd = example_port("--dtypes f32");
  auto target = port(cmd);
  RunOptions o = options({Property::forward}, 5, cmd);
  o.contract = Contract::bf16;
  const auto rows = run_target(*target, o);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].status, "error");
  EXPECT_TRUE(contains(rows[0].note, "does not take bf16 inputs")) << rows[0].note;
  EXPECT_EQ(exit_code(rows), 2);
}
