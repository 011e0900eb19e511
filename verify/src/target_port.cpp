// An external kernel port behind the line protocol of docs/ports.md.
#include <filesystem>
#include "port_client.hpp"

namespace gdr2v {
namespace {

struct PortTarget : Target {
  PortOptions options;
  std::unique_ptr<PortProcess> process;
  Capabilities caps;
  std::string handshake;

  explicit PortTarget(PortOptions o) : options(std::move(o)) {
    process = std::make_unique<PortProcess>(options.command, options.timeout_s);
    caps = process->capabilities();
    handshake = process->handshake();
  }
  std::string name() const override { return options.name; }
  std::string description() const override { return "external port '" + options.command + "' (" + handshake + ")"; }
  Capabilities capabilities() const override { return caps; }
  Contract default_contract() const override {
    for (DType d : caps.dtypes)
      if (d == DType::f32) return Contract::fp32;
    return caps.dtypes.front() == DType::bf16 ? Contract::bf16 : Contract::fp16;
  }
  Outputs run(const Case& c, DType io, const std::string& label) override {
    // A port that failed earlier (crash, hang) is restarted, so one bad case does not hide the others.
    if (!process || !process->alive()) process = std::make_unique<PortProcess>(options.command, options.timeout_s);
    const std::string in = process->work_dir() + "/input.safetensors", out = process->work_dir() + "/output.safetensors";
    std::error_code ec;
    std::filesystem::remove(out, ec);  // never read a previous case's answer
    input_file(c, io, caps.state_vk).save(in);
    process->run_case(in, out, label);
    try {
      return read_output_file(SafeTensors::load(out), c, caps.state_vk);
    } catch (const std::exception& e) {
      throw target_error("port '" + options.command + "' answered ok on " + label + " but its output is wrong: " + e.what());
    }
  }
};

}  // namespace

std::unique_ptr<Target> make_port_target(const PortOptions& options) { return std::make_unique<PortTarget>(options); }

}  // namespace gdr2v
