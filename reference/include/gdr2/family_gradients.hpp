#pragma once
// Gradients of the family members through their GDR-2 adapters (spec section 3). A member's parameters are
// tied GDR-2 gates, so its gradient is the sum of the tied GDR-2 gradients (Eq. 48):
//   KDA:            dbeta_t = sum_i db_t[i] + sum_j dw_t[j]
//   Gated DeltaNet: dbeta_t as KDA, and the scalar decay's da_t = sum_d dg_t[d]
//   DeltaNet:       dbeta_t as KDA
//   GLA:            dq, dk, dg, dv directly (b = 0 and w = 1 are constants)
#include "gdr2/chunkwise_backward.hpp"
#include "gdr2/family.hpp"

namespace gdr2 {

template <class Scalar>
struct KdaGradients {
  Matrix<Scalar> dq, dk, dg, dv, ds0;
  Vector<Scalar> dbeta;
};
template <class Scalar>
struct GatedDeltaNetGradients {
  Matrix<Scalar> dq, dk, dv, ds0;
  Vector<Scalar> dg, dbeta;  // per token
};
template <class Scalar>
struct DeltaNetGradients {
  Matrix<Scalar> dq, dk, dv, ds0;
  Vector<Scalar> dbeta;
};
template <class Scalar>
struct GlaGradients {
  Matrix<Scalar> dq, dk, dg, dv, ds0;
};

// Eq. 48: the gradient of a per-token scalar tied to b_t = beta_t 1 and w_t = beta_t 1.
template <class Scalar>
Vector<Scalar> tied_beta_gradient(const Gradients<Scalar>& g) {
  return g.db.rowwise().sum() + g.dw.rowwise().sum();
}

template <class Scalar>
KdaGradients<Scalar> kda_backward(const KdaHead<Scalar>& h, const Matrix<Scalar>& dout, const Matrix<Scalar>& ds_final,
                                  Index chunk_size = 64) {
  const auto g = chunkwise_backward(as_gdr2(h), dout, ds_final, chunk_size);
  return {g.dq, g.dk, g.dg, g.dv, g.ds0, tied_beta_gradient(g)};
}

template <class Scalar>
GatedDeltaNetGradients<Scalar> gated_deltanet_backward(const GatedDeltaNetHead<Scalar>& h, const Matrix<Scalar>& dout,
                                                       const Matrix<Scalar>& ds_final, Index chunk_size = 64) {
  const auto g = chunkwise_backward(as_gdr2(h), dout, ds_final, chunk_size);
  return {g.dq, g.dk, g.dv, g.ds0, g.dg.rowwise().sum(), tied_beta_gradient(g)};
}

template <class Scalar>
DeltaNetGradients<Scalar> deltanet_backward(const DeltaNetHead<Scalar>& h, const Matrix<Scalar>& dout,
                                            const Matrix<Scalar>& ds_final, Index chunk_size = 64) {
  const auto g = chunkwise_backward(as_gdr2(h), dout, ds_final, chunk_size);
  return {g.dq, g.dk, g.dv, g.ds0, tied_beta_gradient(g)};
}

template <class Scalar>
GlaGradients<Scalar> gla_backward(const GlaHead<Scalar>& h, const Matrix<Scalar>& dout, const Matrix<Scalar>& ds_final,
                                  Index chunk_size = 64) {
  const auto g = chunkwise_backward(as_gdr2(h), dout, ds_final, chunk_size);
  return {g.dq, g.dk, g.dg, g.dv, g.ds0};
}

}  // namespace gdr2
