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
#include <type_traits>

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

// Converts one scalar to another: directly when the target type can be built from the source (e.g.
// cpp_bin_float_50 -> cpp_bin_float_100 keeps every digit, double -> half rounds once), otherwise through
// double (e.g. from an AutoDiffScalar's value).
template <class To, class From>
To convert(const From& x) {
  if constexpr (std::is_same_v<To, From>) return x;
  else if constexpr (std::is_constructible_v<To, const From&>) return static_cast<To>(x);
  else return from_double<To>(to_double(x));
}

// Converts a matrix to another scalar type, coefficient by coefficient with convert<To>.
template <class To, class From>
Matrix<To> cast_matrix(const Matrix<From>& m) {
  Matrix<To> out(m.rows(), m.cols());
  for (Index i = 0; i < m.rows(); ++i)
    for (Index j = 0; j < m.cols(); ++j) out(i, j) = convert<To>(m(i, j));
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
