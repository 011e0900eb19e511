#pragma once
// The family inside the Gated Delta Rule-2 (spec section 3), each as its own independent
// token-by-token implementation in the form its paper writes it (these never call the GDR-2 code,
// so "GDR-2 with tied gates == family member" is a real check), plus adapters that express each
// member as a GDR-2 problem.
//
//   KDA              S_t = (I - beta_t k_t k_t^T) Diag(exp g_t) S_{t-1} + beta_t k_t v_t^T
//   Gated DeltaNet   S_t = (I - beta_t k_t k_t^T) exp(a_t) S_{t-1}     + beta_t k_t v_t^T   (scalar a_t)
//   DeltaNet         S_t = (I - beta_t k_t k_t^T) S_{t-1}              + beta_t k_t v_t^T
//   GLA              S_t = Diag(exp g_t) S_{t-1} + k_t v_t^T
//   o_t = scale * S_t^T q_t for all.
#include "gdr2/head.hpp"

namespace gdr2 {

template <class Scalar>
struct KdaHead {
  Matrix<Scalar> q, k, g;  // T x d_k (g: channel-wise log-decay)
  Matrix<Scalar> v;        // T x d_v
  Vector<Scalar> beta;     // T: one scalar per token
  Matrix<Scalar> s0;       // d_k x d_v
  Scalar scale = Scalar(1);
};

template <class Scalar>
struct GatedDeltaNetHead {
  Matrix<Scalar> q, k;  // T x d_k
  Matrix<Scalar> v;     // T x d_v
  Vector<Scalar> g;     // T: scalar log-decay a_t per token
  Vector<Scalar> beta;  // T
  Matrix<Scalar> s0;
  Scalar scale = Scalar(1);
};

template <class Scalar>
struct DeltaNetHead {
  Matrix<Scalar> q, k, v;
  Vector<Scalar> beta;  // T
  Matrix<Scalar> s0;
  Scalar scale = Scalar(1);
};

template <class Scalar>
struct GlaHead {
  Matrix<Scalar> q, k, g;  // T x d_k
  Matrix<Scalar> v;        // T x d_v
  Matrix<Scalar> s0;
  Scalar scale = Scalar(1);
};

namespace detail {

// Shapes common to every member: q, k (T x d_k), v (T x d_v), s0 (d_k x d_v), finite values.
template <class Scalar>
void validate_family_core(const char* who, const Matrix<Scalar>& q, const Matrix<Scalar>& k,
                          const Matrix<Scalar>& v, const Matrix<Scalar>& s0, const Scalar& scale) {
  check_positive(who, "d_k (columns of q)", q.cols());
  check_positive(who, "d_v (columns of v)", v.cols());
  check_shape(who, "k", k, q.rows(), q.cols(), "T x d_k, from q");
  check_shape(who, "v", v, q.rows(), v.cols(), "T x d_v, T from q");
  check_shape(who, "s0", s0, q.cols(), v.cols(), "d_k x d_v");
  check_finite(who, "q", q);
  check_finite(who, "k", k);
  check_finite(who, "v", v);
  check_finite(who, "s0", s0);
  check_finite_scalar(who, "scale", scale);
}

template <class Scalar>
void validate_per_token(const char* who, const char* name, const Vector<Scalar>& x, Index T) {
  check_shape(who, name, x, T, 1, "T, one scalar per token");
  check_finite(who, name, x);
}

// The delta-rule step shared by KDA, Gated DeltaNet and DeltaNet once the state is decayed:
// S += beta k (v - S^T k)^T (a gradient step on 1/2 ||S^T k - v||^2 with step beta).
template <class Scalar, class KeyRow, class ValueRow>
void delta_rule_step(Matrix<Scalar>& state, const KeyRow& key, const ValueRow& value, const Scalar& beta) {
  Vector<Scalar> prediction_error = value.transpose() - state.transpose() * key.transpose();
  state.noalias() += (beta * key.transpose()) * prediction_error.transpose();
}

template <class Scalar>
void emit_output(Forward<Scalar>& out, Index t, const Matrix<Scalar>& state, const Matrix<Scalar>& q,
                 const Scalar& scale) {
  out.o.row(t).noalias() = scale * (state.transpose() * q.row(t).transpose()).transpose();
}

}  // namespace detail

template <class Scalar>
Forward<Scalar> kda_forward(const KdaHead<Scalar>& h) {
  detail::validate_family_core("kda_forward", h.q, h.k, h.v, h.s0, h.scale);
  detail::check_shape("kda_forward", "g", h.g, h.q.rows(), h.q.cols(), "T x d_k");
  detail::check_finite("kda_forward", "g", h.g);
  detail::validate_per_token("kda_forward", "beta", h.beta, h.q.rows());
  Forward<Scalar> out;
  out.o.resize(h.q.rows(), h.v.cols());
  Matrix<Scalar> state = h.s0;
  for (Index t = 0; t < h.q.rows(); ++t) {
    state = exp_of(h.g.row(t).transpose()).asDiagonal() * state;
    detail::delta_rule_step(state, h.k.row(t), h.v.row(t), h.beta(t));
    detail::emit_output(out, t, state, h.q, h.scale);
  }
  out.s = std::move(state);
  return out;
}

template <class Scalar>
Forward<Scalar> gated_deltanet_forward(const GatedDeltaNetHead<Scalar>& h) {
  detail::validate_family_core("gated_deltanet_forward", h.q, h.k, h.v, h.s0, h.scale);
  detail::validate_per_token("gated_deltanet_forward", "g", h.g, h.q.rows());
  detail::validate_per_token("gated_deltanet_forward", "beta", h.beta, h.q.rows());
  Forward<Scalar> out;
  out.o.resize(h.q.rows(), h.v.cols());
  Matrix<Scalar> state = h.s0;
  using std::exp;
  for (Index t = 0; t < h.q.rows(); ++t) {
    state *= exp(h.g(t));
    detail::delta_rule_step(state, h.k.row(t), h.v.row(t), h.beta(t));
    detail::emit_output(out, t, state, h.q, h.scale);
  }
  out.s = std::move(state);
  return out;
}

template <class Scalar>
Forward<Scalar> deltanet_forward(const DeltaNetHead<Scalar>& h) {
  detail::validate_family_core("deltanet_forward", h.q, h.k, h.v, h.s0, h.scale);
  detail::validate_per_token("deltanet_forward", "beta", h.beta, h.q.rows());
  Forward<Scalar> out;
  out.o.resize(h.q.rows(), h.v.cols());
  Matrix<Scalar> state = h.s0;
  for (Index t = 0; t < h.q.rows(); ++t) {
    detail::delta_rule_step(state, h.k.row(t), h.v.row(t), h.beta(t));
    detail::emit_output(out, t, state, h.q, h.scale);
  }
  out.s = std::move(state);
  return out;
}

template <class Scalar>
Forward<Scalar> gla_forward(const GlaHead<Scalar>& h) {
  detail::validate_family_core("gla_forward", h.q, h.k, h.v, h.s0, h.scale);
  detail::check_shape("gla_forward", "g", h.g, h.q.rows(), h.q.cols(), "T x d_k");
  detail::check_finite("gla_forward", "g", h.g);
  Forward<Scalar> out;
  out.o.resize(h.q.rows(), h.v.cols());
  Matrix<Scalar> state = h.s0;
  for (Index t = 0; t < h.q.rows(); ++t) {
    state = exp_of(h.g.row(t).transpose()).asDiagonal() * state;
    state.noalias() += h.k.row(t).transpose() * h.v.row(t);
    detail::emit_output(out, t, state, h.q, h.scale);
  }
  out.s = std::move(state);
  return out;
}

// ---- Adapters: each member as a GDR-2 problem (spec section 3) ----------------------------------

// KDA: b_t = beta_t 1 (d_k), w_t = beta_t 1 (d_v).
template <class Scalar>
Head<Scalar> as_gdr2(const KdaHead<Scalar>& h) {
  Head<Scalar> x;
  x.q = h.q; x.k = h.k; x.g = h.g; x.v = h.v; x.s0 = h.s0; x.scale = h.scale;
  x.b = h.beta.replicate(1, h.k.cols());
  x.w = h.beta.replicate(1, h.v.cols());
  return x;
}

// Gated DeltaNet: KDA with g_t = a_t 1.
template <class Scalar>
Head<Scalar> as_gdr2(const GatedDeltaNetHead<Scalar>& h) {
  KdaHead<Scalar> kda{h.q, h.k, h.g.replicate(1, h.k.cols()), h.v, h.beta, h.s0, h.scale};
  return as_gdr2(kda);
}

// DeltaNet: Gated DeltaNet with a_t = 0 (alpha_t = 1).
template <class Scalar>
Head<Scalar> as_gdr2(const DeltaNetHead<Scalar>& h) {
  GatedDeltaNetHead<Scalar> gdn{h.q, h.k, h.v, Vector<Scalar>::Zero(h.q.rows()), h.beta, h.s0, h.scale};
  return as_gdr2(gdn);
}

// GLA: b_t = 0, w_t = 1.
template <class Scalar>
Head<Scalar> as_gdr2(const GlaHead<Scalar>& h) {
  Head<Scalar> x;
  x.q = h.q; x.k = h.k; x.g = h.g; x.v = h.v; x.s0 = h.s0; x.scale = h.scale;
  x.b = Matrix<Scalar>::Zero(h.k.rows(), h.k.cols());
  x.w = Matrix<Scalar>::Ones(h.v.rows(), h.v.cols());
  return x;
}

}  // namespace gdr2
