// The reference evaluated in float, bfloat16 and half (chunkwise form with 32-token chunks): always available, so a machine with
// no GPU still has a meaningful run, and their ratios against the chunkwise baseline calibrate the factor.
#include "target.hpp"

namespace gdr2v {
namespace {

struct ReferenceTarget : Target {
  std::string id;
  Precision precision;
  Contract contract;
  ReferenceTarget(std::string i, Precision p, Contract c) : id(std::move(i)), precision(p), contract(c) {}

  std::string name() const override { return id; }
  std::string description() const override {
    return "gdr2 reference, chunkwise form (C = 32) evaluated in " + std::string(id.substr(4));
  }
  Capabilities capabilities() const override {
    Capabilities caps;
    caps.dtypes = {DType::f32, DType::bf16, DType::f16};
    caps.grad = true;  // gdr2/backward.hpp, same form and chunk
    caps.varlen = true;
    caps.gva = true;
    return caps;
  }
  Contract default_contract() const override { return contract; }
  Outputs run(const Case& c, DType, const std::string&) override {
    return reference_in(precision, gdr2::Form::chunkwise, c, 32);
  }
};

}  // namespace

std::vector<std::string> reference_target_names() { return {"ref-float", "ref-bfloat16", "ref-half"}; }

std::unique_ptr<Target> make_reference_target(const std::string& name) {
  if (name == "ref-float") return std::make_unique<ReferenceTarget>(name, Precision::f32, Contract::fp32);
  if (name == "ref-bfloat16") return std::make_unique<ReferenceTarget>(name, Precision::bf16, Contract::bf16);
  if (name == "ref-half") return std::make_unique<ReferenceTarget>(name, Precision::f16, Contract::fp16);
  return nullptr;
}

}  // namespace gdr2v
