#pragma once
// One verification case: a batched GDR-2 problem on the ecosystem layout (spec section 1), the upstream
// gradients when gradients are wanted, and the outputs a target returns. Values are held as doubles; a
// case is rounded once to the dtype a target reads (`round_inputs`), so the reference, the baseline and
// the target all see exactly the same inputs.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>
#include <gdr2/batched.hpp>
#include "safetensors.hpp"

namespace gdr2v {

using gdr2::Index;

// Gate regimes of the generators (issue 5): typical, weak decay (g near 0), strong decay (down to -50),
// erase in [0, 2], gates exactly at 0 or 1, random non-unit keys.
enum class Regime { typical, weak_decay, strong_decay, erase_0_2, gate_edges, raw_keys };
inline constexpr Regime kAllRegimes[] = {Regime::typical,   Regime::weak_decay, Regime::strong_decay,
                                         Regime::erase_0_2, Regime::gate_edges, Regime::raw_keys};
const char* name(Regime r);

// How the values are tied (the family collapses of spec section 3).
enum class Tie { none, kda, gated_deltanet };

// The shape and seed of a case; the values are a deterministic function of it (`make_case`), so a
// RapidCheck counterexample is this small struct and shrinking it shrinks the problem.
struct CaseSpec {
  std::uint64_t seed = 0;
  int B = 1, T = 0, H = 1, group = 1;    // HV = H * group (grouped value heads)
  int K = 16, V = 16;
  bool with_h0 = true;
  std::vector<int> lengths;              // non-empty: packed varlen batch (B = 1) of these lengths
  Regime regime = Regime::typical;
  Tie tie = Tie::none;
  bool want_grad = false;
  int split_permille = 500;              // split property: first part = T * permille / 1000 tokens
  int HV() const { return H * group; }
  std::string text() const;              // one line, for reports
};

struct Case {
  gdr2::Batch<double> x;                 // q, k, g, b [B,T,H,K]; v, w [B,T,HV,V]; h0 [N,HV,K,V] or empty
  bool want_grad = false;
  std::vector<double> dout;              // [B, T, HV, V] upstream gradient of o (when want_grad)
  std::vector<double> dht;               // [N, HV, K, V] upstream gradient of the final state (when want_grad)
  Index N() const { return x.num_sequences(); }
};

struct Outputs {
  std::vector<double> o;                 // [B, T, HV, V]
  std::vector<double> ht;                // [N, HV, K, V]
  bool has_grad = false;
  std::vector<double> dq, dk, dg, db;    // [B, T, H, K]
  std::vector<double> dv, dw;            // [B, T, HV, V]
  std::vector<double> dh0;               // [N, HV, K, V]
};

// The deterministic values of a spec (unrounded doubles).
Case make_case(const CaseSpec& spec);

// A double as text that reads back to the same double (17 significant digits), for file metadata.
std::string number_text(double x);

// Rounds q, k, v, b, w (and dout) to `io` and g, h0 (and dht) to fp32: what a kernel with inputs in `io`
// and fp32 gates and states reads.
Case round_inputs(const Case& c, DType io);

// The tokens [t0, t1) of a fixed-length (no cu_seqlens) case, starting from `h0` (empty: zero).
Case slice_tokens(const Case& c, Index t0, Index t1, const std::vector<double>& h0);

// Names and shapes of output tensors, in a fixed order ("o", "ht", then the gradients).
struct NamedTensor {
  std::string name;
  const std::vector<double>* values;
  std::vector<std::int64_t> shape;
};
std::vector<NamedTensor> output_tensors(const Case& c, const Outputs& out);

// Protocol files (docs/ports.md): the input file of a case, and reading a port's output file with shape
// checks. Both throw std::runtime_error with a message naming the tensor, the expected and actual shape.
SafeTensors input_file(const Case& c, DType io, bool state_vk);
Outputs read_output_file(const SafeTensors& f, const Case& c, bool state_vk);
Case case_from_file(const SafeTensors& f);  // inverse of input_file (used by replay)

}  // namespace gdr2v
