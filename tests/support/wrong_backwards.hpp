#pragma once
// Negative controls: realistic wrong backwards with chunkwise_backward's signature. Every gradient check in
// gdr2 (finite differences, the AD adjoint identity, recurrent vs chunkwise, gdr2-verify) must reject each.
#include <gdr2/chunkwise_backward.hpp>

namespace gdr2_test {

// Spec section 6, last paragraph: the gate applied as one scalar post-scale per column of dA (KDA's shortcut,
// exact only when b_s = w_s = beta_s 1).
template <class Scalar>
gdr2::Gradients<Scalar> wrong_backward_scalar_postscale(const gdr2::Head<Scalar>& h, const gdr2::Matrix<Scalar>& dout,
                                                        const gdr2::Matrix<Scalar>& ds_final, gdr2::Index chunk = 64) {
  return gdr2::detail::chunkwise_backward_impl(h, dout, ds_final, chunk, gdr2::detail::BackwardFault::scalar_postscale);
}

// The last chunk's dS_C reaches S_0 without the chunk's decay gamma_C.
template <class Scalar>
gdr2::Gradients<Scalar> wrong_backward_no_last_chunk_decay(const gdr2::Head<Scalar>& h, const gdr2::Matrix<Scalar>& dout,
                                                           const gdr2::Matrix<Scalar>& ds_final, gdr2::Index chunk = 64) {
  return gdr2::detail::chunkwise_backward_impl(h, dout, ds_final, chunk, gdr2::detail::BackwardFault::no_last_chunk_decay);
}

// The gradient of the initial state is forgotten (returned as zero).
template <class Scalar>
gdr2::Gradients<Scalar> wrong_backward_no_ds0(const gdr2::Head<Scalar>& h, const gdr2::Matrix<Scalar>& dout,
                                              const gdr2::Matrix<Scalar>& ds_final, gdr2::Index chunk = 64) {
  return gdr2::detail::chunkwise_backward_impl(h, dout, ds_final, chunk, gdr2::detail::BackwardFault::no_ds0);
}

}  // namespace gdr2_test
