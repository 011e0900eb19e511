#pragma once
// The gates of the Gated DeltaNet-2 layer (spec section 7) and their backward, so a kernel that fuses the
// gate activations can be checked against the reference too:
//   b = sigmoid(x_b)        w = sigmoid(x_w)        g = -exp(a) * softplus(x_f + delta)
// with a one scalar per key head and delta one value per key channel.
#include "gdr2/gradients.hpp"

namespace gdr2 {

template <class Scalar>
struct GateInputs {
  Matrix<Scalar> x_b;     // T x d_k: erase-gate logits
  Matrix<Scalar> x_w;     // T x d_v: write-gate logits
  Matrix<Scalar> x_f;     // T x d_k: decay pre-activations (W_f x)
  Scalar a = Scalar(0);   // log of the decay rate of this head
  Vector<Scalar> delta;   // d_k: decay bias per key channel
};

template <class Scalar>
struct GateValues {
  Matrix<Scalar> b, w, g;
};

template <class Scalar>
struct GateGradients {
  Matrix<Scalar> dx_b, dx_w, dx_f;
  Scalar da = Scalar(0);
  Vector<Scalar> ddelta;
};

namespace detail {
template <class Scalar>
Scalar sigmoid(const Scalar& x) {  // stable for both signs
  using std::exp;
  if (x >= Scalar(0)) return Scalar(1) / (Scalar(1) + exp(-x));
  const Scalar e = exp(x);
  return e / (Scalar(1) + e);
}
// log1p(u) for u >= 0 with only exp/log (AutoDiffScalar has no log1p): Goldberg's correction
// log(1 + u) * u / ((1 + u) - 1) is accurate to a few ulps, and (1 + u) == 1 means log1p(u) = u to rounding.
template <class Scalar>
Scalar log1p_nonnegative(const Scalar& u) {
  using std::log;
  const Scalar one_plus = Scalar(1) + u;
  if (one_plus == Scalar(1)) return u;
  return log(one_plus) * (u / (one_plus - Scalar(1)));
}
template <class Scalar>
Scalar softplus(const Scalar& x) {  // log(1 + e^x) = max(x, 0) + log1p(e^{-|x|})
  using std::exp;
  using std::abs;
  const Scalar positive = x > Scalar(0) ? x : Scalar(0);
  return positive + log1p_nonnegative(Scalar(exp(-abs(x))));
}
template <class Scalar>
void validate_gates(const GateInputs<Scalar>& x, const char* who) {
  check_shape(who, "x_f", x.x_f, x.x_b.rows(), x.x_b.cols(), "T x d_k, like x_b");
  check_shape(who, "x_w", x.x_w, x.x_b.rows(), x.x_w.cols(), "T x d_v, T from x_b");
  check_shape(who, "delta", x.delta, x.x_b.cols(), 1, "d_k, one bias per key channel");
  check_finite(who, "x_b", x.x_b);
  check_finite(who, "x_w", x.x_w);
  check_finite(who, "x_f", x.x_f);
  check_finite(who, "delta", x.delta);
  check_finite_scalar(who, "a", x.a);
}
}  // namespace detail

template <class Scalar>
GateValues<Scalar> apply_gates(const GateInputs<Scalar>& x) {
  detail::validate_gates(x, "apply_gates");
  using std::exp;
  GateValues<Scalar> out;
  out.b = x.x_b.unaryExpr([](const Scalar& s) { return detail::sigmoid(s); });
  out.w = x.x_w.unaryExpr([](const Scalar& s) { return detail::sigmoid(s); });
  out.g.resize(x.x_f.rows(), x.x_f.cols());
  const Scalar rate = exp(x.a);
  for (Index t = 0; t < x.x_f.rows(); ++t)
    for (Index d = 0; d < x.x_f.cols(); ++d) out.g(t, d) = -rate * detail::softplus(Scalar(x.x_f(t, d) + x.delta(d)));
  return out;
}

// Chain rule through the gates: sigmoid' = s (1 - s); softplus' = sigmoid; dg/da = g.
template <class Scalar>
GateGradients<Scalar> gates_backward(const GateInputs<Scalar>& x, const Matrix<Scalar>& db, const Matrix<Scalar>& dw,
                                     const Matrix<Scalar>& dg) {
  detail::validate_gates(x, "gates_backward");
  detail::check_shape("gates_backward", "db", db, x.x_b.rows(), x.x_b.cols(), "T x d_k, like x_b");
  detail::check_shape("gates_backward", "dw", dw, x.x_w.rows(), x.x_w.cols(), "T x d_v, like x_w");
  detail::check_shape("gates_backward", "dg", dg, x.x_f.rows(), x.x_f.cols(), "T x d_k, like x_f");
  using std::exp;
  const GateValues<Scalar> gates = apply_gates(x);
  GateGradients<Scalar> out;
  out.dx_b = db.cwiseProduct(gates.b.unaryExpr([](const Scalar& s) { return Scalar(s * (Scalar(1) - s)); }));
  out.dx_w = dw.cwiseProduct(gates.w.unaryExpr([](const Scalar& s) { return Scalar(s * (Scalar(1) - s)); }));
  out.dx_f.resize(x.x_f.rows(), x.x_f.cols());
  out.ddelta = Vector<Scalar>::Zero(x.x_f.cols());
  const Scalar rate = exp(x.a);
  out.da = Scalar(0);
  for (Index t = 0; t < x.x_f.rows(); ++t)
    for (Index d = 0; d < x.x_f.cols(); ++d) {
      const Scalar dpre = -rate * detail::sigmoid(Scalar(x.x_f(t, d) + x.delta(d))) * dg(t, d);
      out.dx_f(t, d) = dpre;
      out.ddelta(d) += dpre;
      out.da += dg(t, d) * gates.g(t, d);
    }
  return out;
}

}  // namespace gdr2
