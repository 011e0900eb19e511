#pragma once
// The oracle side of gdr2-verify: precision contracts, calibrated tolerances, and the reference outputs
// (x_ref in double, the baseline in the contract's precision). See docs/ports.md, "Contracts and
// tolerances", for the reasoning behind every number here.
#include <optional>
#include <string>
#include <vector>
#include "case.hpp"

namespace gdr2v {

// What precision a target promises. fp32: fp32 inputs and arithmetic. tf32: fp32 inputs, tensor-core
// products with a 10-bit mantissa. bf16 / fp16: inputs (q, k, v, b, w, o) in that format, fp32 gates and
// states, fp32 accumulation.
enum class Contract { fp32, tf32, bf16, fp16 };
const char* name(Contract c);
std::optional<Contract> parse_contract(const std::string& s);
DType io_dtype(Contract c);  // the dtype of q, k, v, b, w, o, do in the files: f32 for fp32/tf32

// Pass iff err <= factor * max(baseline, floor).
struct Tolerance {
  double factor = 1;
  double floor = 0;
  const char* baseline_algorithm = "";  // how the baseline is computed, for reports
};
Tolerance tolerance_of(Contract c);

// x_ref: the recurrent reference in double on the (already rounded) inputs; gradients when c.want_grad.
Outputs reference_double(const Case& c);
// Baselines: the reference itself evaluated in the contract's precision on the same inputs, in three forms:
// chunkwise WY with C = 64 (the kernels' algorithm), chunkwise with C = 16 (exercises the inter-chunk state
// R = U - Y S_0 even on short sequences) and token-by-token. The baseline error of a tensor is the largest of
// the three: one form's error alone can be lucky on a given case (two roundings that cancel), and a bound built
// on it cries wolf (docs/ports.md, "Contracts and tolerances").
std::vector<Outputs> baselines(Contract contract, const Case& c);
// The reference in a given precision and form (the built-in reference targets).
enum class Precision { f32, bf16, f16 };
Outputs reference_in(Precision p, gdr2::Form form, const Case& c, Index chunk_size = 64);
Precision precision_of(Contract c);  // fp32: f32; bf16: bf16; tf32, fp16: f16

// Family collapses (spec section 3): the independent KDA / Gated DeltaNet token-by-token references
// (gdr2/family.hpp) on a case with tied gates; dbeta[B, T, H] from an independent KDA backward.
struct TiedReference {
  Outputs forward;             // o, ht
  std::vector<double> dbeta;   // [B, T, H] (empty unless c.want_grad)
  std::vector<double> dlog_decay;  // [B, T, H]: sum_i dL/dg_t[i] (Gated DeltaNet: dL/d(log a_t)), same backward
};
TiedReference tied_reference(Tie tie, const Case& c);
// dL/dbeta through Eq. 48 from a GDR-2 gradient: sum_i db[t,h,i] + sum_{hv in group h} sum_j dw[t,hv,j].
std::vector<double> dbeta_eq48(const Case& c, const Outputs& grads);
// The scalar-decay reduction of a GDR-2 gradient: sum_i dg[t,h,i] (dL/d(log a_t) when g_t = log a_t 1).
std::vector<double> dlog_decay_sum(const Case& c, const Outputs& grads);

// Relative Frobenius error ||x - ref|| / ||ref|| (||x - ref|| when ref is zero); +inf when x holds a
// non-finite value or the sizes differ.
double relative_error(const std::vector<double>& x, const std::vector<double>& ref);

}  // namespace gdr2v
