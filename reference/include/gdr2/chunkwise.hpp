#pragma once
// Chunkwise WY form of the Gated Delta Rule-2 (spec section 5, Eq. 18-25 and Appendix A).
//
// Numerical stability: gamma_r^{-1} = exp(-G_r) is never formed. Every product that mixes
// gamma_r and gamma_s^{-1} is evaluated as exp(G_r - G_s) with r >= s (so <= 1 when g <= 0), and the
// products with S_0 use gamma_r = exp(G_r) itself (<= 1). Strong decay (G_r of -3000) therefore
// underflows to exact zeros instead of overflowing to inf * 0 = nan.
#include <algorithm>
#include "gdr2/head.hpp"

namespace gdr2 {

// Everything the chunkwise form computes for one chunk of n tokens starting at token t0 with state
// S_0 (also what a chunkwise backward needs again).
template <class Scalar>
struct Chunk {
  Index t0 = 0, n = 0;
  Matrix<Scalar> G;       // n x d_k: G_r = sum_{i<=r} g_i (cumulative log-decay within the chunk)
  Matrix<Scalar> gamma;   // n x d_k: gamma_r = exp(G_r)
  Matrix<Scalar> T;       // n x n strictly lower: T_rs = sum_d b_r k_r k_s exp(G_r - G_s), s < r
  Matrix<Scalar> Aqk;     // n x n lower incl. diagonal: sum_d q_r k_s exp(G_r - G_s), r >= s
  Matrix<Scalar> Ebar;    // n x d_k: gamma_r * b_r * k_r
  Matrix<Scalar> Z;       // n x d_v: w_r * v_r
  Matrix<Scalar> Y, U;    // A Ebar, A Z with A = (I + T)^{-1}
  Matrix<Scalar> R;       // n x d_v: U - Y S_0 (the residuals z_r - r_r of the chunk's tokens)
  Matrix<Scalar> Ktail;   // n x d_k: exp(G_C - G_r) * k_r
};

// Eq. 18-23 for one chunk: scores, the WY solve, and the residuals R.
template <class Scalar>
Chunk<Scalar> chunk_intermediates(const Head<Scalar>& h, Index t0, Index n, const Matrix<Scalar>& s0) {
  using std::exp;
  const Index dk = h.dk();
  Chunk<Scalar> c;
  c.t0 = t0;
  c.n = n;
  auto q = h.q.middleRows(t0, n);
  auto k = h.k.middleRows(t0, n);
  auto b = h.b.middleRows(t0, n);
  c.G.resize(n, dk);
  for (Index r = 0; r < n; ++r)  // G_r = sum_{i<=r} g_i
    c.G.row(r) = (r == 0) ? Matrix<Scalar>(h.g.row(t0)) : Matrix<Scalar>(c.G.row(r - 1) + h.g.row(t0 + r));
  c.gamma = exp_of(c.G);
  c.T = Matrix<Scalar>::Zero(n, n);
  c.Aqk = Matrix<Scalar>::Zero(n, n);
  Vector<Scalar> decay(dk);
  for (Index r = 0; r < n; ++r) {
    for (Index s = 0; s <= r; ++s) {
      decay = exp_of((c.G.row(r) - c.G.row(s)).transpose());  // exp(G_r - G_s) <= 1 for r >= s
      Vector<Scalar> decayed_key = decay.cwiseProduct(k.row(s).transpose());
      c.Aqk(r, s) = q.row(r).dot(decayed_key.transpose());  // (Aqk)_rs, r >= s
      if (s < r) c.T(r, s) = b.row(r).cwiseProduct(k.row(r)).dot(decayed_key.transpose());  // T_rs, s < r
    }
  }
  c.Ebar = c.gamma.cwiseProduct(b).cwiseProduct(k);                   // Ebar = gamma * (B * K)
  c.Z = h.w.middleRows(t0, n).cwiseProduct(h.v.middleRows(t0, n));    // Z = W * V
  Matrix<Scalar> unit_lower = c.T;
  unit_lower.diagonal().setOnes();                                    // I + T
  auto solver = unit_lower.template triangularView<Eigen::UnitLower>();
  c.Y = solver.solve(c.Ebar);                                         // Y = A Ebar
  c.U = solver.solve(c.Z);                                            // U = A Z
  c.R = c.U - c.Y * s0;                                               // R = U - Y S_0
  c.Ktail.resize(n, dk);
  for (Index r = 0; r < n; ++r)                                       // exp(G_C - G_r) * k_r
    c.Ktail.row(r) = exp_of((c.G.row(n - 1) - c.G.row(r)).transpose()).transpose().cwiseProduct(k.row(r));
  return c;
}

// Chunkwise forward: any chunk size >= 1, any T >= 0 (the last chunk may be shorter).
template <class Scalar>
Forward<Scalar> chunkwise_forward(const Head<Scalar>& h, Index chunk_size = 64, const ForwardOptions& options = {}) {
  validate(h, "chunkwise_forward");
  detail::check_positive("chunkwise_forward", "chunk_size", chunk_size);
  const Index T = h.T(), dv = h.dv();
  Forward<Scalar> out;
  out.o.resize(T, dv);
  Matrix<Scalar> state = h.s0;
  if (options.keep_states) {
    out.states.reserve(static_cast<size_t>(T) + 1);
    out.states.push_back(state);
  }
  for (Index t0 = 0; t0 < T; t0 += chunk_size) {
    const Index n = std::min(chunk_size, T - t0);
    const Chunk<Scalar> c = chunk_intermediates(h, t0, n, state);
    // Eq. 24: O = Qgamma S_0 + Aqk R, row r of Qgamma = gamma_r * q_r; times scale.
    Matrix<Scalar> qgamma = c.gamma.cwiseProduct(h.q.middleRows(t0, n));
    out.o.middleRows(t0, n) = h.scale * (qgamma * state + c.Aqk * c.R);
    if (options.keep_states) {
      // Eq. 36: S_r = Diag(gamma_r) S_0 + sum_{s<=r} (exp(G_r - G_s) * k_s) R_s^T.
      for (Index r = 0; r < n; ++r) {
        Matrix<Scalar> s_r = c.gamma.row(r).transpose().asDiagonal() * state;
        for (Index s = 0; s <= r; ++s) {
          Vector<Scalar> decayed_key =
              exp_of((c.G.row(r) - c.G.row(s)).transpose()).cwiseProduct(h.k.row(t0 + s).transpose());
          s_r.noalias() += decayed_key * c.R.row(s);
        }
        out.states.push_back(std::move(s_r));
      }
    }
    // Eq. 25: S_C = Diag(gamma_C) S_0 + Ktail^T R.
    Matrix<Scalar> next = c.gamma.row(n - 1).transpose().asDiagonal() * state;
    next.noalias() += c.Ktail.transpose() * c.R;
    state = std::move(next);
  }
  out.s = std::move(state);
  return out;
}

}  // namespace gdr2
