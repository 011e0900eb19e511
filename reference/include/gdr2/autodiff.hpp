#pragma once
// Eigen::AutoDiffScalar as a gdr2 scalar: the ScalarOps gdr2 needs (value extraction, finiteness).
#include "gdr2/scalar.hpp"  // Eigen/Core first: unsupported/Eigen/AutoDiff does not include it
#include <unsupported/Eigen/AutoDiff>

namespace gdr2 {

template <class Derivatives>
struct ScalarOps<Eigen::AutoDiffScalar<Derivatives>> {
  using AD = Eigen::AutoDiffScalar<Derivatives>;
  using Inner = typename Eigen::internal::remove_all<Derivatives>::type::Scalar;
  static double to_double(const AD& x) { return ScalarOps<Inner>::to_double(x.value()); }
  static bool is_finite(const AD& x) {
    if (!ScalarOps<Inner>::is_finite(x.value())) return false;
    for (Index i = 0; i < x.derivatives().size(); ++i)
      if (!ScalarOps<Inner>::is_finite(x.derivatives()(i))) return false;
    return true;
  }
  static AD from_double(double x) { return AD(ScalarOps<Inner>::from_double(x)); }
};

}  // namespace gdr2
