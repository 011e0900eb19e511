#pragma once
// Token-by-token form of the Gated Delta Rule-2 (spec section 2, Eq. 8-10).
#include "gdr2/head.hpp"

namespace gdr2 {

template <class Scalar>
Forward<Scalar> recurrent_forward(const Head<Scalar>& h, const ForwardOptions& options = {}) {
  validate(h, "recurrent_forward");
  const Index T = h.T(), dk = h.dk(), dv = h.dv();
  Forward<Scalar> out;
  out.o.resize(T, dv);
  Matrix<Scalar> state = h.s0;
  if (options.keep_states) {
    out.states.reserve(static_cast<size_t>(T) + 1);
    out.states.push_back(state);
  }
  Vector<Scalar> alpha(dk), erase_key(dk), written_value(dv), read(dv);
  for (Index t = 0; t < T; ++t) {
    alpha = exp_of(h.g.row(t).transpose());                                 // alpha_t = exp(g_t)
    erase_key = h.b.row(t).transpose().cwiseProduct(h.k.row(t).transpose());  // e_t = b_t * k_t
    written_value = h.w.row(t).transpose().cwiseProduct(h.v.row(t).transpose());  // z_t = w_t * v_t
    state = alpha.asDiagonal() * state;                        // Eq. 8: Sbar_t = D_t S_{t-1}
    read.noalias() = state.transpose() * erase_key;            // Eq. 9: r_t = Sbar_t^T e_t
    written_value -= read;                                     // z_t - r_t
    state.noalias() += h.k.row(t).transpose() * written_value.transpose();  // Eq. 10: S_t
    out.o.row(t).noalias() = h.scale * (state.transpose() * h.q.row(t).transpose()).transpose();  // o_t
    if (options.keep_states) out.states.push_back(state);
  }
  out.s = std::move(state);
  return out;
}

}  // namespace gdr2
