#pragma once
// The properties gdr2-verify checks on a target, their RapidCheck generators (with shrinking), and the
// evaluation of one case (shared by the property runner and `gdr2-verify replay`).
#include <cstdint>
#include <optional>
#include <string>
#include <vector>
#include "case.hpp"
#include "oracle.hpp"
#include "target.hpp"

namespace gdr2v {

enum class Property {
  forward,         // o and the final state match the reference
  grad,            // every gradient matches the reference backward (--grad)
  kda,             // b = w = beta 1: matches the independent KDA reference; dbeta through Eq. 48
  gated_deltanet,  // also scalar decay: matches the independent Gated DeltaNet reference
  split,           // two calls carrying the state are as accurate as one call (against the reference)
  deterministic,   // the same input twice gives bitwise-equal outputs (reported, never fails the run)
};
inline constexpr Property kAllProperties[] = {Property::forward, Property::grad, Property::kda,
                                              Property::gated_deltanet, Property::split, Property::deterministic};
const char* name(Property p);
std::optional<Property> parse_property(const std::string& s);

enum class Profile { small, paper, large };
const char* name(Profile p);
std::optional<Profile> parse_profile(const std::string& s);

struct RunOptions {
  int cases = 100;
  std::uint64_t seed = 1;
  Profile profile = Profile::small;
  std::optional<Contract> contract;   // overrides the target's default contract
  bool grad = false;
  std::string repro_dir = "gdr2-verify-failures";
  double shrink_budget_s = 60;        // stop shrinking after this long (keeps the smallest failure so far)
  bool progress = false;              // progress line on stderr
  std::string replay_prefix = "gdr2-verify";  // how the replay command starts
  std::string port_cmd;               // recorded in repro files of port targets
  std::vector<Property> only;         // empty: every property
};

struct TensorCheck {
  std::string name;
  double err = 0, baseline = 0, ratio = 0;  // ratio = err / max(baseline, floor)
};

struct Evaluation {
  bool pass = true;
  double ratio = 0;                   // the worst tensor's ratio
  std::vector<TensorCheck> tensors;
  std::string message;                // for failures: which tensor, err, bound
  Outputs actual, expected;           // kept for repro files
};

// Evaluates one property on one case `c` that is already rounded to the contract's io dtype.
// `split_at`: tokens of the first call (split property). Throws target_error on infrastructure failures.
Evaluation evaluate(Target& target, Property p, Contract contract, const Case& c, Index split_at,
                    const std::string& label);

struct Failure {
  std::string spec;                   // minimal case after shrinking
  Evaluation eval;
  int shrink_steps = 0;
  std::string repro_path, replay_command;
};

struct PropertyResult {
  std::string target, property, contract;
  std::string status;                 // "pass", "FAIL", "error", "skipped", "info"
  int cases = 0, passed = 0;
  double worst = 0, median = 0, seconds = 0;
  double factor = 0, floor = 0;
  std::uint64_t seed = 0;
  std::string note;                   // skip reason, error message, determinism note
  std::vector<Failure> failures;
};

// Runs every applicable property on a target.
std::vector<PropertyResult> run_target(Target& target, const RunOptions& options);

// `gdr2-verify replay FILE`: reruns a repro file's case and property against `target`.
PropertyResult replay(Target& target, const std::string& file, std::optional<Contract> contract);

}  // namespace gdr2v
