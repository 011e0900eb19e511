// The reference in every precision against cpp_bin_float_50 (and mpfr_float_50 when libmpfr is present).
// double: asserted against a bound that grows with T, stated below. float, bfloat16, half: run, checked for
// sanity (finite, error < 1), and their errors reported as test properties (they calibrate kernel tolerances).
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>
#include <boost/multiprecision/cpp_bin_float.hpp>
#include <boost/multiprecision/eigen.hpp>
#ifdef GDR2_HAVE_MPFR
#include <boost/multiprecision/mpfr.hpp>
#endif
#include <gdr2/reference.hpp>
#include "generators.hpp"

using gdr2::Index;
using mp50 = boost::multiprecision::cpp_bin_float_50;
using mp100 = boost::multiprecision::cpp_bin_float_100;
using namespace gdr2_test;

namespace {

// Forward error bound for double, relative Frobenius: each token applies a step whose rounding is at most
// gamma_{2d+4} = (2d+4) u / (1 - (2d+4) u) relative to the state (decay, a d-term dot product for the read, a
// rank-one update, a d-term dot product for the output). In the tested regimes the steps are contractive
// (|1 - b k.k| <= 1, alpha <= 1), so the errors add: rel_err <= (T + 1) * (2d + 4) * u, with d = max(d_k, d_v)
// and u = 2^-53. The chunkwise form adds the WY solve, a length-C triangular solve with |T_rs| <= 2: another
// C * d * u. Tests assert the sum times 4 (norm-equivalence slack between entrywise and Frobenius bounds).
double double_bound(Index T, Index dk, Index dv, Index chunk) {
  const double u = std::ldexp(1.0, -53);
  const double d = static_cast<double>(std::max(dk, dv));
  return 4.0 * ((T + 1) * (2 * d + 4) + chunk * d) * u;
}

template <class S>
double form_error(const gdr2::Head<double>& h, const gdr2::Forward<mp50>& exact, bool chunkwise) {
  const auto low = h.cast<S>();
  const auto f = chunkwise ? gdr2::chunkwise_forward(low, 64) : gdr2::recurrent_forward(low);
  return relative_error(gdr2::cast_matrix<double>(f.o), gdr2::cast_matrix<double>(exact.o));
}

}  // namespace

RC_GTEST_PROP(Precision, DoubleAgreesWithMultiprecisionWithinGrowingBound, ()) {
  const auto spec = *gen_problem(300, 64, 30000);
  RC_PRE(spec.regime != Gates::negative_eig);  // b in [0, 2] is not contractive: covered by the identity tests
  const auto h = spec.head();
  const auto exact = gdr2::recurrent_forward(h.cast<mp50>());
  const double bound_rec = double_bound(spec.T, spec.dk, spec.dv, 0);
  const double bound_chk = double_bound(spec.T, spec.dk, spec.dv, 64);
  const auto rec = gdr2::recurrent_forward(h);
  const auto chk = gdr2::chunkwise_forward(h, 64);
  RC_ASSERT(relative_error(gdr2::cast_matrix<mp50>(rec.o), exact.o) <= bound_rec);
  RC_ASSERT(relative_error(gdr2::cast_matrix<mp50>(chk.o), exact.o) <= bound_chk);
  RC_ASSERT(relative_error(gdr2::cast_matrix<mp50>(chk.s), exact.s) <= bound_chk);
}

TEST(Precision, LongDoubleAndMultiprecisionTypesAgree) {
  const auto h = random_head(21, 90, 12, 10, Gates::negative_eig);
  const auto exact = gdr2::chunkwise_forward(h.cast<mp100>(), 32);
  // cpp_bin_float_50 vs cpp_bin_float_100: the 50-digit result is correct to ~1e-45 (rounding growth ~T*d).
  const auto mp50_result = gdr2::recurrent_forward(h.cast<mp50>());
  EXPECT_LE(relative_error(gdr2::cast_matrix<mp100>(mp50_result.o), exact.o), 1e-40);
#ifdef GDR2_HAVE_MPFR
  using mpfr50 = boost::multiprecision::mpfr_float_50;
  const auto mpfr_result = gdr2::recurrent_forward(h.cast<mpfr50>());
  mp100 worst = 0;
  for (Index i = 0; i < exact.o.rows(); ++i)
    for (Index j = 0; j < exact.o.cols(); ++j)
      worst = std::max<mp100>(worst, abs(mp100(mpfr_result.o(i, j).str(60)) - exact.o(i, j)));
  EXPECT_LE(gdr2::to_double(worst / exact.o.norm()), 1e-40);
#endif
  // long double (64-bit mantissa on x86, u = 2^-64): same bound as double with its own u.
  const auto ld = gdr2::recurrent_forward(h.cast<long double>());
  const double u_ld = std::ldexp(1.0, -64);
  EXPECT_LE(relative_error(gdr2::cast_matrix<mp100>(ld.o), exact.o), 4.0 * 91 * (2 * 12 + 4) * u_ld);
}

TEST(Precision, LowPrecisionErrorsAreReported) {
  const auto h = random_head(5, 256, 64, 64, Gates::typical);
  const auto exact = gdr2::recurrent_forward(h.cast<mp50>());
  struct Row { const char* name; double rec, chk; };
  const Row rows[] = {
      {"float", form_error<float>(h, exact, false), form_error<float>(h, exact, true)},
      {"bfloat16", form_error<Eigen::bfloat16>(h, exact, false), form_error<Eigen::bfloat16>(h, exact, true)},
      {"half", form_error<Eigen::half>(h, exact, false), form_error<Eigen::half>(h, exact, true)},
  };
  for (const auto& r : rows) {
    std::printf("  %-9s recurrent %.3e  chunkwise(64) %.3e  (T=256, d_k=d_v=64, typical gates)\n", r.name, r.rec, r.chk);
    RecordProperty(std::string(r.name) + "_recurrent", std::to_string(r.rec));
    RecordProperty(std::string(r.name) + "_chunkwise", std::to_string(r.chk));
    // Sanity only: finite and below 1 (a broken low-precision path gives nan or O(1) errors).
    EXPECT_TRUE(std::isfinite(r.rec) && std::isfinite(r.chk)) << r.name;
    EXPECT_LT(r.rec, 1.0) << r.name;
    EXPECT_LT(r.chk, 1.0) << r.name;
  }
  // Ordering sanity: more mantissa bits, smaller error (float 24 bits, half 11, bfloat16 8).
  EXPECT_LT(rows[0].rec, rows[2].rec);
  EXPECT_LT(rows[2].rec, rows[1].rec);
}
