#pragma once
// Scalar-type plumbing: one place that says how gdr2 talks to a scalar type.
//
// The reference is templated on the scalar (float, double, long double, Eigen::half, Eigen::bfloat16,
// Boost.Multiprecision numbers, Eigen::AutoDiffScalar). Element access uses ADL (`using std::exp;
// exp(x)`), so every type that Eigen accepts and that has exp() found by ADL works. The only
// operations that need a per-type answer are collected in ScalarOps, which a new type may specialise
// (gdr2/autodiff.hpp does so for AutoDiffScalar).
#include <Eigen/Core>
#include <cmath>
#include <string>
#include <sstream>
#include <iomanip>

namespace gdr2 {

using Index = Eigen::Index;

// Row-major dynamic matrix: rows are time steps (q, k, v, ...) or key channels (states).
template <class Scalar>
using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class Scalar>
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

template <class Scalar, class Enable = void>
struct ScalarOps {
  static double to_double(const Scalar& x) { return static_cast<double>(x); }
  static bool is_finite(const Scalar& x) {
    using std::isfinite;
    return isfinite(x);
  }
  static Scalar from_double(double x) { return static_cast<Scalar>(x); }
};

template <class Scalar>
double to_double(const Scalar& x) { return ScalarOps<Scalar>::to_double(x); }
template <class Scalar>
bool is_finite(const Scalar& x) { return ScalarOps<Scalar>::is_finite(x); }
template <class Scalar>
Scalar from_double(double x) { return ScalarOps<Scalar>::from_double(x); }

// exp of every coefficient of an expression, through ADL (so half, multiprecision and autodiff work).
template <class Derived>
auto exp_of(const Eigen::MatrixBase<Derived>& x) {
  using Scalar = typename Derived::Scalar;
  return x.unaryExpr([](const Scalar& a) -> Scalar { using std::exp; return exp(a); });
}

// Converts a matrix to another scalar type, through double: exact when the values are doubles
// (as gdr2's generators make them) and the target is double or wider; a single rounding into
// float, half or bfloat16.
template <class To, class From>
Matrix<To> cast_matrix(const Matrix<From>& m) {
  Matrix<To> out(m.rows(), m.cols());
  for (Index i = 0; i < m.rows(); ++i)
    for (Index j = 0; j < m.cols(); ++j) {
      if constexpr (std::is_same_v<To, From>) out(i, j) = m(i, j);
      else if constexpr (std::is_arithmetic_v<From>) out(i, j) = from_double<To>(static_cast<double>(m(i, j)));
      else out(i, j) = from_double<To>(to_double(m(i, j)));
    }
  return out;
}

// Shortest round-trip text of a value, for error messages.
template <class Scalar>
std::string to_text(const Scalar& x) {
  std::ostringstream s;
  s << std::setprecision(17) << to_double(x);
  return s.str();
}

}  // namespace gdr2
