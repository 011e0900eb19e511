#pragma once
// Gate-aware chunkwise backward (spec section 6, Appendix B), the vector-Jacobian product of the chunkwise
// WY forward (gdr2/chunkwise.hpp), numerically stable in the same way: every gamma_r / gamma_s pair is the
// factor P_rs = exp(G_r - G_s) with r >= s, and the spec's Kbar = gamma^{-1} K terms (dKbar * gamma^{-1},
// dgamma -= dKbar K gamma^{-2}) are grouped with their gamma_r partners into P_rs before evaluation:
//   T_rs   = sum_d b_r k_r k_s P_rs           -> M_rs = dT_rs b_r k_r k_s P_rs:  dG_r += sum_s M_rs, dG_s -= sum_r M_rs
//   Aqk_rs = sum_d q_r k_s P_rs               -> N_rs = dAqk_rs q_r k_s P_rs:    dG_r += sum_s N_rs, dG_s -= sum_r N_rs
//   Ktail_r = exp(G_C - G_r) k_r              -> dG_C += dKtail_r Ktail_r,        dG_r -= dKtail_r Ktail_r
// Memory: the forward's chunk-start states are kept (T / C matrices of d_k x d_v); the chunk intermediates
// (scores, A, Y, U, R) are recomputed per chunk.
#include <algorithm>
#include "gdr2/chunkwise.hpp"
#include "gdr2/gradients.hpp"

namespace gdr2 {
namespace detail {

// Deliberate faults, only for negative controls (tests/support/wrong_backwards.hpp, gdr2-verify's mutants):
// a correct checker must reject each of them.
enum class BackwardFault {
  none,
  scalar_postscale,     // dA formed from ungated products then scaled by one scalar per column (KDA's shortcut)
  no_last_chunk_decay,  // the last chunk passes dS_C to S_0 without its decay gamma_C
  no_ds0,               // the gradient of the initial state is dropped
};

template <class Scalar>
Gradients<Scalar> chunkwise_backward_impl(const Head<Scalar>& h, const Matrix<Scalar>& dout,
                                          const Matrix<Scalar>& ds_final, Index chunk_size, BackwardFault fault) {
  validate_upstream(h, dout, ds_final, "chunkwise_backward");
  check_positive("chunkwise_backward", "chunk_size", chunk_size);
  const Index T = h.T(), dk = h.dk(), dv = h.dv();
  auto grads = Gradients<Scalar>::zeros(T, dk, dv);

  // Forward over chunks, keeping each chunk's start state (Eq. 25).
  std::vector<Matrix<Scalar>> starts;
  Matrix<Scalar> state = h.s0;
  for (Index t0 = 0; t0 < T; t0 += chunk_size) {
    starts.push_back(state);
    const Index n = std::min(chunk_size, T - t0);
    const Chunk<Scalar> c = chunk_intermediates(h, t0, n, state);
    Matrix<Scalar> next = c.gamma.row(n - 1).transpose().asDiagonal() * state;
    next.noalias() += c.Ktail.transpose() * c.R;
    state = std::move(next);
  }

  Matrix<Scalar> dS = ds_final;  // gradient of the current chunk's end state
  Vector<Scalar> decay(dk);
  for (Index ci = static_cast<Index>(starts.size()) - 1; ci >= 0; --ci) {
    const Index t0 = ci * chunk_size, n = std::min(chunk_size, T - t0);
    const Matrix<Scalar>& s0 = starts[static_cast<size_t>(ci)];
    const Chunk<Scalar> c = chunk_intermediates(h, t0, n, s0);
    const bool last_chunk = ci == static_cast<Index>(starts.size()) - 1;
    auto q = h.q.middleRows(t0, n);
    auto k = h.k.middleRows(t0, n);
    auto b = h.b.middleRows(t0, n);
    auto v = h.v.middleRows(t0, n);
    auto w = h.w.middleRows(t0, n);
    const Matrix<Scalar> qgamma = c.gamma.cwiseProduct(q);
    Matrix<Scalar> dG = Matrix<Scalar>::Zero(n, dk);  // dL/dG_r

    // O = scale (Qgamma S_0 + Aqk R)  (Eq. 24)
    const Matrix<Scalar> dO = h.scale * dout.middleRows(t0, n);
    Matrix<Scalar> dAqk = (dO * c.R.transpose()).template triangularView<Eigen::Lower>();
    Matrix<Scalar> dR = c.Aqk.transpose() * dO;
    const Matrix<Scalar> dQgamma = dO * s0.transpose();
    Matrix<Scalar> dS0 = qgamma.transpose() * dO;

    // S_C = Diag(gamma_C) S_0 + Ktail^T R  (Eq. 25)
    dR.noalias() += c.Ktail * dS;
    const Matrix<Scalar> dKtail = c.R * dS.transpose();
    if (fault == BackwardFault::no_last_chunk_decay && last_chunk) {
      dS0 += dS;  // the fault: decay of the last chunk dropped (and its gate gradient)
    } else {
      dS0.noalias() += c.gamma.row(n - 1).transpose().asDiagonal() * dS;
      // dgamma_C = rowsum(dS_C * S_0); dG_C += dgamma_C * gamma_C
      dG.row(n - 1) += (dS.cwiseProduct(s0).rowwise().sum()).transpose().cwiseProduct(c.gamma.row(n - 1));
    }

    // R = U - Y S_0
    const Matrix<Scalar>& dU = dR;
    const Matrix<Scalar> dY = -(dR * s0.transpose());
    dS0.noalias() -= c.Y.transpose() * dR;

    // U = A Z, Y = A Ebar with A = (I + T)^{-1}: A^T x is a transposed unit-lower solve.
    Matrix<Scalar> unit_lower = c.T;
    unit_lower.diagonal().setOnes();
    auto solver = unit_lower.template triangularView<Eigen::UnitLower>();
    const Matrix<Scalar> dZ = solver.transpose().solve(dU);      // A^T dU
    Matrix<Scalar> dEbar = solver.transpose().solve(dY);         // A^T dY
    Matrix<Scalar> dA;
    if (fault == BackwardFault::scalar_postscale) {
      // The fault: dA from the ungated products dU V^T and dY (gamma K)^T, then one scalar per column s
      // (the mean of w_s, b_s): exact when w_s = b_s = beta_s 1 (KDA), wrong for channel-wise gates.
      dA = dU * v.transpose() * w.rowwise().mean().asDiagonal();
      dA.noalias() += dY * c.gamma.cwiseProduct(k).transpose() * b.rowwise().mean().asDiagonal();
    } else {
      dA = dU * c.Z.transpose();
      dA.noalias() += dY * c.Ebar.transpose();
    }
    // dT = -A^T dA A^T, strictly lower part.
    const Matrix<Scalar> At_dA = solver.transpose().solve(dA);                                    // A^T dA
    const Matrix<Scalar> At_dA_At = solver.solve(At_dA.transpose()).transpose();                  // (A (A^T dA)^T)^T
    Matrix<Scalar> dT = -At_dA_At;
    dT = dT.template triangularView<Eigen::StrictlyLower>();

    // Pairwise terms: T_rs (s < r) and Aqk_rs (s <= r), both with P_rs = exp(G_r - G_s).
    for (Index r = 0; r < n; ++r) {
      for (Index s = 0; s <= r; ++s) {
        if (dAqk(r, s) == Scalar(0) && (s == r || dT(r, s) == Scalar(0))) continue;
        decay = exp_of((c.G.row(r) - c.G.row(s)).transpose());
        // Aqk: dq_r += dAqk_rs k_s P_rs; dk_s += dAqk_rs q_r P_rs; dG via N_rs
        const Vector<Scalar> ks_p = k.row(s).transpose().cwiseProduct(decay);
        const Vector<Scalar> qr_p = q.row(r).transpose().cwiseProduct(decay);
        grads.dq.row(t0 + r) += dAqk(r, s) * ks_p.transpose();
        grads.dk.row(t0 + s) += dAqk(r, s) * qr_p.transpose();
        const Vector<Scalar> N = dAqk(r, s) * qr_p.cwiseProduct(k.row(s).transpose());
        dG.row(r) += N.transpose();
        dG.row(s) -= N.transpose();
        if (s < r) {
          // T: db_r += dT_rs k_r k_s P_rs; dk_r += dT_rs b_r k_s P_rs; dk_s += dT_rs b_r k_r P_rs; dG via M_rs
          const Vector<Scalar> br_kr = b.row(r).transpose().cwiseProduct(k.row(r).transpose());
          grads.db.row(t0 + r) += dT(r, s) * k.row(r).cwiseProduct(ks_p.transpose());
          grads.dk.row(t0 + r) += dT(r, s) * b.row(r).cwiseProduct(ks_p.transpose());
          grads.dk.row(t0 + s) += dT(r, s) * br_kr.cwiseProduct(decay).transpose();
          const Vector<Scalar> M = dT(r, s) * br_kr.cwiseProduct(ks_p);
          dG.row(r) += M.transpose();
          dG.row(s) -= M.transpose();
        }
      }
    }

    // Ebar = gamma * B * K;  Qgamma = gamma * Q;  Ktail_r = exp(G_C - G_r) k_r;  Z = W * V.
    grads.db.middleRows(t0, n) += dEbar.cwiseProduct(c.gamma).cwiseProduct(k);
    grads.dk.middleRows(t0, n) += dEbar.cwiseProduct(c.gamma).cwiseProduct(b);
    dG += dEbar.cwiseProduct(c.Ebar);
    grads.dq.middleRows(t0, n) += dQgamma.cwiseProduct(c.gamma);
    dG += dQgamma.cwiseProduct(qgamma);
    for (Index r = 0; r < n; ++r) {
      grads.dk.row(t0 + r) += dKtail.row(r).cwiseProduct(exp_of((c.G.row(n - 1) - c.G.row(r)).transpose()).transpose());
      const Matrix<Scalar> term = dKtail.row(r).cwiseProduct(c.Ktail.row(r));
      dG.row(n - 1) += term;
      dG.row(r) -= term;
    }
    grads.dw.middleRows(t0, n) = dZ.cwiseProduct(v);
    grads.dv.middleRows(t0, n) = dZ.cwiseProduct(w);
    // G_r = sum_{i<=r} g_i: dg_i = sum_{r>=i} dG_r (reverse cumulative sum within the chunk).
    Matrix<Scalar> running = Matrix<Scalar>::Zero(1, dk);
    for (Index r = n - 1; r >= 0; --r) {
      running += dG.row(r);
      grads.dg.row(t0 + r) = running;
    }
    dS = std::move(dS0);
  }
  grads.ds0 = fault == BackwardFault::no_ds0 ? Matrix<Scalar>::Zero(dk, dv) : std::move(dS);
  return grads;
}

}  // namespace detail

template <class Scalar>
Gradients<Scalar> chunkwise_backward(const Head<Scalar>& h, const Matrix<Scalar>& dout, const Matrix<Scalar>& ds_final,
                                     Index chunk_size = 64) {
  return detail::chunkwise_backward_impl(h, dout, ds_final, chunk_size, detail::BackwardFault::none);
}

}  // namespace gdr2
