#pragma once
// What a backward returns, and the checks of its upstream gradients.
#include <array>
#include <utility>
#include "gdr2/head.hpp"

namespace gdr2 {

// Vector-Jacobian products of the loss L = <dout, o> + <ds_final, S_T> with respect to every input.
template <class Scalar>
struct Gradients {
  Matrix<Scalar> dq, dk, dg, db;  // T x d_k
  Matrix<Scalar> dv, dw;          // T x d_v
  Matrix<Scalar> ds0;             // d_k x d_v

  static Gradients zeros(Index T, Index dk, Index dv) {
    Gradients g;
    g.dq = Matrix<Scalar>::Zero(T, dk);
    g.dk = g.dq;
    g.dg = g.dq;
    g.db = g.dq;
    g.dv = Matrix<Scalar>::Zero(T, dv);
    g.dw = g.dv;
    g.ds0 = Matrix<Scalar>::Zero(dk, dv);
    return g;
  }

  template <class To>
  Gradients<To> cast() const {
    return {cast_matrix<To>(dq), cast_matrix<To>(dk), cast_matrix<To>(dg), cast_matrix<To>(db),
            cast_matrix<To>(dv), cast_matrix<To>(dw), cast_matrix<To>(ds0)};
  }
};

// The gradient tensors by name, in the fixed order dq, dk, dg, db, dv, dw, ds0 (for reports and loops).
template <class Scalar>
auto named_tensors(const Gradients<Scalar>& g) {
  return std::array<std::pair<const char*, const Matrix<Scalar>*>, 7>{{{"dq", &g.dq}, {"dk", &g.dk}, {"dg", &g.dg},
                                                                        {"db", &g.db}, {"dv", &g.dv}, {"dw", &g.dw},
                                                                        {"ds0", &g.ds0}}};
}

template <class Scalar>
void validate_upstream(const Head<Scalar>& h, const Matrix<Scalar>& dout, const Matrix<Scalar>& ds_final,
                       const char* who) {
  validate(h, who);
  detail::check_shape(who, "dout", dout, h.T(), h.dv(), "T x d_v, like o");
  detail::check_shape(who, "ds_final", ds_final, h.dk(), h.dv(), "d_k x d_v, like the final state");
  detail::check_finite(who, "dout", dout);
  detail::check_finite(who, "ds_final", ds_final);
}

}  // namespace gdr2
