#pragma once
// Token-by-token backward (spec section 6, last block): reverse over time with dS accumulated from later
// tokens. States are recomputed segment by segment from checkpoints every `segment` tokens, so memory is
// O((T / segment + segment) * d_k * d_v) instead of O(T * d_k * d_v).
#include <algorithm>
#include "gdr2/gradients.hpp"
#include "gdr2/recurrent.hpp"

namespace gdr2 {

template <class Scalar>
Gradients<Scalar> recurrent_backward(const Head<Scalar>& h, const Matrix<Scalar>& dout, const Matrix<Scalar>& ds_final) {
  validate_upstream(h, dout, ds_final, "recurrent_backward");
  const Index T = h.T(), dk = h.dk(), dv = h.dv();
  constexpr Index segment = 64;
  auto grads = Gradients<Scalar>::zeros(T, dk, dv);

  // Forward once, keeping S at the start of every segment.
  std::vector<Matrix<Scalar>> checkpoints;
  {
    Head<Scalar> part = h;
    Matrix<Scalar> state = h.s0;
    for (Index t0 = 0; t0 < T; t0 += segment) {
      checkpoints.push_back(state);
      const Index n = std::min(segment, T - t0);
      part.q = h.q.middleRows(t0, n); part.k = h.k.middleRows(t0, n); part.g = h.g.middleRows(t0, n);
      part.b = h.b.middleRows(t0, n); part.v = h.v.middleRows(t0, n); part.w = h.w.middleRows(t0, n);
      part.s0 = state;
      state = recurrent_forward(part).s;
    }
  }

  Matrix<Scalar> dS = ds_final;  // dL/dS_t, accumulated from later tokens
  std::vector<Matrix<Scalar>> states;  // S_{t0-1+i} within the segment, i = 0..n
  Vector<Scalar> alpha(dk), e(dk), z(dv), r(dv), delta(dv), ddelta(dv), de(dk);
  for (Index seg = static_cast<Index>(checkpoints.size()) - 1; seg >= 0; --seg) {
    const Index t0 = seg * segment, n = std::min(segment, T - t0);
    states.assign(1, checkpoints[static_cast<size_t>(seg)]);
    for (Index i = 0; i < n; ++i) {  // recompute the segment's states (Eq. 8-10)
      const Index t = t0 + i;
      Matrix<Scalar> s = exp_of(h.g.row(t).transpose()).asDiagonal() * states.back();
      e = h.b.row(t).transpose().cwiseProduct(h.k.row(t).transpose());
      z = h.w.row(t).transpose().cwiseProduct(h.v.row(t).transpose());
      r.noalias() = s.transpose() * e;
      s.noalias() += h.k.row(t).transpose() * (z - r).transpose();
      states.push_back(std::move(s));
    }
    for (Index i = n - 1; i >= 0; --i) {
      const Index t = t0 + i;
      const Matrix<Scalar>& s_prev = states[static_cast<size_t>(i)];
      const Matrix<Scalar>& s_t = states[static_cast<size_t>(i) + 1];
      alpha = exp_of(h.g.row(t).transpose());
      const Matrix<Scalar> sbar = alpha.asDiagonal() * s_prev;
      e = h.b.row(t).transpose().cwiseProduct(h.k.row(t).transpose());
      z = h.w.row(t).transpose().cwiseProduct(h.v.row(t).transpose());
      r.noalias() = sbar.transpose() * e;
      delta = z - r;
      // o_t = scale S_t^T q_t
      dS.noalias() += (h.scale * h.q.row(t).transpose()) * dout.row(t);
      grads.dq.row(t).noalias() = (h.scale * (s_t * dout.row(t).transpose())).transpose();
      // S_t = Sbar_t + k_t delta^T
      grads.dk.row(t).noalias() = (dS * delta).transpose();
      ddelta.noalias() = dS.transpose() * h.k.row(t).transpose();
      // delta = z - r: dz = ddelta, dr = -ddelta; r = Sbar^T e: dSbar += e dr^T, de = Sbar dr
      de.noalias() = -(sbar * ddelta);
      grads.dw.row(t) = ddelta.cwiseProduct(h.v.row(t).transpose()).transpose();
      grads.dv.row(t) = ddelta.cwiseProduct(h.w.row(t).transpose()).transpose();
      grads.db.row(t) = de.cwiseProduct(h.k.row(t).transpose()).transpose();
      grads.dk.row(t) += de.cwiseProduct(h.b.row(t).transpose()).transpose();
      Matrix<Scalar> dsbar = dS;
      dsbar.noalias() -= e * ddelta.transpose();
      // Sbar = D S_{t-1}: dS_{t-1} = D dSbar, dalpha = rowsum(dSbar * S_{t-1}), dg = alpha * dalpha
      grads.dg.row(t) = alpha.cwiseProduct(dsbar.cwiseProduct(s_prev).rowwise().sum()).transpose();
      dS = alpha.asDiagonal() * dsbar;
    }
  }
  grads.ds0 = std::move(dS);
  return grads;
}

}  // namespace gdr2
