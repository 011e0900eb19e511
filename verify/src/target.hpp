#pragma once
// A target is an implementation under test: the built-in reference in low precision, the CUDA kernels,
// or an external port speaking the protocol of docs/ports.md.
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>
#include "case.hpp"
#include "oracle.hpp"

namespace gdr2v {

// What a target declares it supports; the generators stay inside these limits.
struct Capabilities {
  std::vector<DType> dtypes{DType::f32};
  bool grad = false;
  bool varlen = false;
  bool gva = false;           // grouped value heads (HV > H)
  int max_k = 256, max_v = 256;
  bool state_vk = false;      // states stored [N, HV, V, K] instead of [N, HV, K, V]
  bool deterministic = true;  // expected bitwise reproducible (only informs the report)
};

// An infrastructure failure (port crashed, hung, answered garbage, wrote a wrong shape, CUDA error):
// never a numerical pass, reported with exit code 2.
class target_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Target {
 public:
  virtual ~Target() = default;
  virtual std::string name() const = 0;
  virtual std::string description() const = 0;
  virtual Capabilities capabilities() const = 0;
  virtual Contract default_contract() const = 0;
  // Runs the forward (and the backward when c.want_grad). `c` is already rounded to `io`; `label` names the
  // case in error messages. Throws target_error on infrastructure failures.
  virtual Outputs run(const Case& c, DType io, const std::string& label) = 0;
};

// Built-in reference targets: "ref-float", "ref-bfloat16", "ref-half" (chunkwise form, C = 32, in that precision).
std::vector<std::string> reference_target_names();
std::unique_ptr<Target> make_reference_target(const std::string& name);  // nullptr when unknown

// CUDA targets ("cuda-recurrent", "cuda-chunk-fast", "cuda-chunk-accurate"): empty list when gdr2-verify was
// built without CUDA or no device is present at run time (`why` says which).
std::vector<std::string> cuda_target_names(std::string* why = nullptr);
std::unique_ptr<Target> make_cuda_target(const std::string& name);

struct PortOptions {
  std::string command;            // run through /bin/sh -c
  double timeout_s = 60;          // per case (and for the handshake)
  std::string name = "port";
};
// Starts the port and reads its handshake; throws target_error with the reason.
std::unique_ptr<Target> make_port_target(const PortOptions& options);

}  // namespace gdr2v
