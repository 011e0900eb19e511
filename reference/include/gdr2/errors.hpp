#pragma once
// Input validation: every check names the tensor, what was expected and what was found.
#include <stdexcept>
#include <string>
#include <sstream>
#include "gdr2/scalar.hpp"

namespace gdr2 {

// Raised for every bad input (shape, dimension, layout, non-finite value). Never an abort.
class invalid_argument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream s;
  s << "gdr2: ";
  (s << ... << parts);
  throw invalid_argument(s.str());
}

// `who`: the function that checks; `name`: the tensor; `meaning`: what the dimensions stand for.
template <class Derived>
void check_shape(const char* who, const char* name, const Eigen::EigenBase<Derived>& m, Index rows,
                 Index cols, const char* meaning) {
  if (m.rows() != rows || m.cols() != cols)
    fail(who, ": tensor '", name, "' has shape ", m.rows(), " x ", m.cols(), ", expected ", rows, " x ", cols,
         " (", meaning, ")");
}

template <class Derived>
void check_finite(const char* who, const char* name, const Eigen::MatrixBase<Derived>& m) {
  for (Index i = 0; i < m.rows(); ++i)
    for (Index j = 0; j < m.cols(); ++j)
      if (!is_finite(m(i, j)))
        fail(who, ": tensor '", name, "' has a non-finite value ", to_text(m(i, j)), " at [", i, ", ", j, "]");
}

template <class Scalar>
void check_finite_scalar(const char* who, const char* name, const Scalar& x) {
  if (!is_finite(x)) fail(who, ": '", name, "' is not finite: ", to_text(x));
}

inline void check_positive(const char* who, const char* name, Index value) {
  if (value < 1) fail(who, ": ", name, " must be >= 1, got ", value);
}

}  // namespace detail
}  // namespace gdr2
