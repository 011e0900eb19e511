#pragma once
// One attention head of one sequence: the inputs of the Gated Delta Rule-2 (spec section 1).
#include <vector>
#include "gdr2/errors.hpp"

namespace gdr2 {

template <class Scalar>
struct Head {
  Matrix<Scalar> q, k;  // T x d_k: query, key
  Matrix<Scalar> g;     // T x d_k: log-decay (natural log); alpha_t = exp(g_t)
  Matrix<Scalar> b;     // T x d_k: erase gate (key axis), [0,1] or [0,2]
  Matrix<Scalar> v;     // T x d_v: value
  Matrix<Scalar> w;     // T x d_v: write gate (value axis), [0,1]
  Matrix<Scalar> s0;    // d_k x d_v: initial state S_0
  Scalar scale = Scalar(1);  // output scale (zeros() sets the usual 1/sqrt(d_k))

  Index T() const { return q.rows(); }
  Index dk() const { return q.cols(); }
  Index dv() const { return v.cols(); }

  // A head of the given shape with every tensor zero, g = 0 (no decay), scale = 1/sqrt(d_k).
  static Head zeros(Index T, Index dk, Index dv) {
    Head h;
    h.q = Matrix<Scalar>::Zero(T, dk);
    h.k = h.q;
    h.g = h.q;
    h.b = h.q;
    h.v = Matrix<Scalar>::Zero(T, dv);
    h.w = h.v;
    h.s0 = Matrix<Scalar>::Zero(dk, dv);
    using std::sqrt;
    h.scale = Scalar(1) / sqrt(from_double<Scalar>(static_cast<double>(dk)));
    return h;
  }

  // Converts every tensor to another scalar type (e.g. double -> bfloat16 to evaluate the same
  // algorithm in low precision, or double -> cpp_bin_float_50 for a near-exact answer).
  template <class To>
  Head<To> cast() const {
    Head<To> h;
    h.q = cast_matrix<To>(q);
    h.k = cast_matrix<To>(k);
    h.g = cast_matrix<To>(g);
    h.b = cast_matrix<To>(b);
    h.v = cast_matrix<To>(v);
    h.w = cast_matrix<To>(w);
    h.s0 = cast_matrix<To>(s0);
    h.scale = convert<To>(scale);
    return h;
  }
};

// What a forward returns: o (T x d_v), the final state s (d_k x d_v), and, when asked for,
// states[t] = S_t for t = 0..T (states[0] = S_0).
template <class Scalar>
struct Forward {
  Matrix<Scalar> o;
  Matrix<Scalar> s;
  std::vector<Matrix<Scalar>> states;
};

struct ForwardOptions {
  bool keep_states = false;  // fill Forward::states with S_0..S_T
};

// Throws gdr2::invalid_argument naming the tensor when a shape disagrees or a value is not finite.
// Dimensions are taken from q (T, d_k) and v (d_v).
template <class Scalar>
void validate(const Head<Scalar>& h, const char* who) {
  const Index T = h.T(), dk = h.dk(), dv = h.dv();
  detail::check_positive(who, "d_k (columns of q)", dk);
  detail::check_positive(who, "d_v (columns of v)", dv);
  detail::check_shape(who, "k", h.k, T, dk, "T x d_k, T and d_k from q");
  detail::check_shape(who, "g", h.g, T, dk, "T x d_k, T and d_k from q");
  detail::check_shape(who, "b", h.b, T, dk, "T x d_k, T and d_k from q");
  detail::check_shape(who, "v", h.v, T, dv, "T x d_v, T from q");
  detail::check_shape(who, "w", h.w, T, dv, "T x d_v, T from q, d_v from v");
  detail::check_shape(who, "s0", h.s0, dk, dv, "d_k x d_v, d_k from q, d_v from v");
  detail::check_finite(who, "q", h.q);
  detail::check_finite(who, "k", h.k);
  detail::check_finite(who, "g", h.g);
  detail::check_finite(who, "b", h.b);
  detail::check_finite(who, "v", h.v);
  detail::check_finite(who, "w", h.w);
  detail::check_finite(who, "s0", h.s0);
  detail::check_finite_scalar(who, "scale", h.scale);
}

}  // namespace gdr2
