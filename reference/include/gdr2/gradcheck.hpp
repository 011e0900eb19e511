#pragma once
// Gradient checking against the reference, for users' own backward passes (docs/gradcheck.md).
//
// gradcheck(head, dout, ds_final, backward): central differences of the loss
//   L(x) = <dout, o(x)> + <ds_final, S_T(x)>
// with respect to every input entry, evaluated with the reference recurrent forward in a multiprecision type
// (default cpp_bin_float_100) and Richardson-extrapolated over `levels` halvings of the step: truncation error
// O(h^(2 levels)), rounding error O(eps / h), both far below any double tolerance. The report gives, per tensor,
// the largest error relative to that tensor's largest gradient entry, its index, and the step used.
//
// compare_gradients<Contract>(head, dout, ds_final, user): for gradients computed in a low precision (e.g. a
// kernel's fp32 or bf16 gradients). Reference x_ref = the chunkwise backward in cpp_bin_float_50; baseline = the
// error of the reference backward itself evaluated in `Contract` on the same rounded inputs. A tensor passes iff
// err <= factor * max(baseline, floor), with err and baseline relative Frobenius errors against x_ref.
#include <boost/multiprecision/cpp_bin_float.hpp>
#include <boost/multiprecision/eigen.hpp>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>
#include "gdr2/chunkwise_backward.hpp"
#include "gdr2/recurrent.hpp"

namespace gdr2 {

struct GradcheckOptions {
  int levels = 4;          // Richardson levels: steps h, h/2, ..., h/2^(levels-1); truncation O(h^(2 levels))
  double step = 0;         // h; 0 = eps_fd^(1 / (2 levels + 1)) * max(1, |x|), balancing truncation and rounding
  double tolerance = 0;    // 0 = automatic (see gradcheck)
};

struct TensorCheck {
  std::string name;
  double max_error = 0;        // max_i |checked_i - fd_i| / max_i |fd_i| (relative to the tensor's scale)
  Index row = -1, col = -1;    // where the max error is
  double checked = 0, finite_difference = 0;  // the two values there
  double scale = 0;            // max_i |fd_i| of the tensor (the global scale when the tensor is zero)
  double fd_uncertainty = 0;   // |last two Richardson estimates| / scale, maximised over the tensor
};

struct GradcheckReport {
  std::vector<TensorCheck> tensors;
  double step = 0;             // the base step h used (before scaling by max(1, |x|))
  int levels = 0;
  double tolerance = 0;
  double max_error = 0;
  bool passed = false;
  std::string to_string() const {
    std::ostringstream s;
    s << "gradcheck: " << (passed ? "PASS" : "FAIL") << "  max error " << max_error << "  tolerance " << tolerance
      << "  step " << step << "  Richardson levels " << levels << "\n";
    for (const auto& t : tensors)
      s << "  " << t.name << ": max error " << t.max_error << " at [" << t.row << ", " << t.col << "] (checked "
        << t.checked << ", finite difference " << t.finite_difference << ", scale " << t.scale
        << ", fd uncertainty " << t.fd_uncertainty << ")\n";
    return s.str();
  }
};

namespace detail {

// L = <dout, o> + <ds_final, S_T> by the reference recurrent forward in Scalar.
template <class Scalar>
Scalar loss(const Head<Scalar>& h, const Matrix<Scalar>& dout, const Matrix<Scalar>& ds_final) {
  const auto f = recurrent_forward(h);
  return f.o.cwiseProduct(dout).sum() + f.s.cwiseProduct(ds_final).sum();
}

template <class Scalar>
std::array<Matrix<Scalar>*, 7> inputs(Head<Scalar>& h) {
  return {&h.q, &h.k, &h.g, &h.b, &h.v, &h.w, &h.s0};
}

}  // namespace detail

// Finite-difference gradients of the loss (dq, dk, dg, db, dv, dw, ds0) in FDScalar, with per-entry
// uncertainty (difference of the last two Richardson estimates) returned in `uncertainty`.
template <class FDScalar = boost::multiprecision::cpp_bin_float_100>
Gradients<FDScalar> finite_difference_gradients(const Head<double>& head, const Matrix<double>& dout,
                                                const Matrix<double>& ds_final, const GradcheckOptions& options,
                                                Gradients<FDScalar>* uncertainty = nullptr, double* step_used = nullptr) {
  validate_upstream(head, dout, ds_final, "gradcheck");
  if (options.levels < 1) detail::fail("gradcheck: levels must be >= 1, got ", options.levels);
  using std::abs;
  using std::pow;
  Head<FDScalar> x = head.template cast<FDScalar>();
  const Matrix<FDScalar> d_o = cast_matrix<FDScalar>(dout), d_s = cast_matrix<FDScalar>(ds_final);
  const FDScalar eps = std::numeric_limits<FDScalar>::epsilon();
  const FDScalar base_step = options.step > 0 ? FDScalar(options.step)
                                              : FDScalar(pow(eps, FDScalar(1) / FDScalar(2 * options.levels + 1)));
  if (step_used) *step_used = to_double(base_step);
  auto grads = Gradients<FDScalar>::zeros(head.T(), head.dk(), head.dv());
  auto spread = grads;
  auto outs = std::array<Matrix<FDScalar>*, 7>{&grads.dq, &grads.dk, &grads.dg, &grads.db, &grads.dv, &grads.dw, &grads.ds0};
  auto spreads = std::array<Matrix<FDScalar>*, 7>{&spread.dq, &spread.dk, &spread.dg, &spread.db, &spread.dv, &spread.dw, &spread.ds0};
  auto in = detail::inputs(x);
  const int L = options.levels;
  std::vector<std::vector<FDScalar>> table(static_cast<size_t>(L), std::vector<FDScalar>(static_cast<size_t>(L)));
  for (size_t which = 0; which < in.size(); ++which) {
    Matrix<FDScalar>& m = *in[which];
    for (Index i = 0; i < m.rows(); ++i)
      for (Index j = 0; j < m.cols(); ++j) {
        const FDScalar original = m(i, j);
        FDScalar h = base_step * (abs(original) > FDScalar(1) ? abs(original) : FDScalar(1));
        for (int level = 0; level < L; ++level, h /= 2) {
          m(i, j) = original + h;
          const FDScalar up = detail::loss(x, d_o, d_s);
          m(i, j) = original - h;
          const FDScalar down = detail::loss(x, d_o, d_s);
          m(i, j) = original;
          table[level][0] = (up - down) / (FDScalar(2) * h);
          FDScalar factor = 4;  // errors go as h^2, h^4, ...: eliminate one power per column
          for (int c = 1; c <= level; ++c, factor *= 4)
            table[level][c] = table[level][c - 1] + (table[level][c - 1] - table[level - 1][c - 1]) / (factor - FDScalar(1));
        }
        (*outs[which])(i, j) = table[L - 1][L - 1];
        (*spreads[which])(i, j) = L > 1 ? FDScalar(abs(table[L - 1][L - 1] - table[L - 2][L - 2])) : FDScalar(0);
      }
  }
  if (uncertainty) *uncertainty = std::move(spread);
  return grads;
}

// Checks `backward(head, dout, ds_final)` -> Gradients<S> (any scalar S) against finite differences in FDScalar.
// Automatic tolerance: 100 * (T + 1) * max(d_k, d_v) * eps(S) (the rounding a correct backward in S can
// accumulate, with a 100x allowance for error constants), but never below 10 x the finite differences' own
// uncertainty.
template <class FDScalar = boost::multiprecision::cpp_bin_float_100, class Backward>
GradcheckReport gradcheck(const Head<double>& head, const Matrix<double>& dout, const Matrix<double>& ds_final,
                          Backward&& backward, const GradcheckOptions& options = {}) {
  GradcheckReport report;
  Gradients<FDScalar> spread;
  const auto fd = finite_difference_gradients<FDScalar>(head, dout, ds_final, options, &spread, &report.step);
  const auto checked = backward(head, dout, ds_final);
  using Checked = typename std::decay_t<decltype(checked.dq)>::Scalar;
  const auto checked_fd = checked.template cast<FDScalar>();
  report.levels = options.levels;
  const auto fd_named = named_tensors(fd), checked_named = named_tensors(checked_fd), spread_named = named_tensors(spread);
  double global_scale = 0;
  for (const auto& [name, m] : fd_named)
    if (m->size() > 0) global_scale = std::max(global_scale, to_double(FDScalar(m->cwiseAbs().maxCoeff())));
  if (global_scale == 0) global_scale = 1;
  double worst_uncertainty = 0;
  for (size_t t = 0; t < fd_named.size(); ++t) {
    const Matrix<FDScalar>& f = *fd_named[t].second;
    const Matrix<FDScalar>& c = *checked_named[t].second;
    TensorCheck check;
    check.name = fd_named[t].first;
    if (c.rows() != f.rows() || c.cols() != f.cols())
      detail::fail("gradcheck: the checked backward returned '", check.name, "' of shape ", c.rows(), " x ", c.cols(),
                   ", expected ", f.rows(), " x ", f.cols());
    check.scale = f.size() > 0 ? to_double(FDScalar(f.cwiseAbs().maxCoeff())) : 0.0;
    if (check.scale == 0) check.scale = global_scale;
    const FDScalar scale(check.scale);
    for (Index i = 0; i < f.rows(); ++i)
      for (Index j = 0; j < f.cols(); ++j) {
        if (!is_finite(c(i, j)))
          detail::fail("gradcheck: the checked backward returned a non-finite '", check.name, "' at [", i, ", ", j,
                       "]: ", to_text(c(i, j)));
        using std::abs;
        const double e = to_double(FDScalar(abs(c(i, j) - f(i, j)) / scale));
        if (e > check.max_error || check.row < 0) {
          check.max_error = e; check.row = i; check.col = j;
          check.checked = to_double(c(i, j)); check.finite_difference = to_double(f(i, j));
        }
        check.fd_uncertainty = std::max(check.fd_uncertainty, to_double(FDScalar((*spread_named[t].second)(i, j) / scale)));
      }
    worst_uncertainty = std::max(worst_uncertainty, check.fd_uncertainty);
    report.max_error = std::max(report.max_error, check.max_error);
    report.tensors.push_back(check);
  }
  if (options.tolerance > 0) {
    report.tolerance = options.tolerance;
  } else {
    const double eps = to_double(Checked(std::numeric_limits<Checked>::epsilon()));
    const double d = static_cast<double>(std::max(head.dk(), head.dv()));
    report.tolerance = std::max(100.0 * (head.T() + 1) * d * eps, 10.0 * worst_uncertainty);
  }
  report.passed = report.max_error <= report.tolerance;
  return report;
}

// ---- A user's low-precision gradients against the reference, with the calibrated tolerance ----------------

struct GradientTensorComparison {
  std::string name;
  double error = 0;     // ||user - ref|| / ||ref||
  double baseline = 0;  // the reference evaluated in the contract precision, same measure
  double bound = 0;     // factor * max(baseline, floor)
  bool passed = false;
};

struct GradientComparison {
  std::vector<GradientTensorComparison> tensors;
  double factor = 0, floor = 0;
  bool passed = false;
  std::string to_string() const {
    std::ostringstream s;
    s << "compare_gradients: " << (passed ? "PASS" : "FAIL") << "  factor " << factor << "  floor " << floor << "\n";
    for (const auto& t : tensors)
      s << "  " << t.name << ": error " << t.error << "  baseline " << t.baseline << "  bound " << t.bound
        << "  ratio " << (t.baseline > 0 ? t.error / t.baseline : 0.0) << (t.passed ? "" : "  FAIL") << "\n";
    return s.str();
  }
};

// factor 8: a different evaluation order (a kernel's tiling, its accumulation order) of the same algorithm in
// the same precision has error constants a small factor apart; 8 tolerates that and still rejects a wrong
// term, which gives relative errors of order 1. floor = 8 * eps(Contract): guards tensors whose baseline is
// accidentally tiny (e.g. exactly representable results).
template <class Contract, class UserScalar>
GradientComparison compare_gradients(const Head<double>& head, const Matrix<double>& dout, const Matrix<double>& ds_final,
                                     const Gradients<UserScalar>& user, Index chunk_size = 64, double factor = 8.0,
                                     double floor = -1.0) {
  using Exact = boost::multiprecision::cpp_bin_float_50;
  validate_upstream(head, dout, ds_final, "compare_gradients");
  const auto exact = chunkwise_backward(head.template cast<Exact>(), cast_matrix<Exact>(dout),
                                        cast_matrix<Exact>(ds_final), chunk_size).template cast<double>();
  const auto low = chunkwise_backward(head.template cast<Contract>(), cast_matrix<Contract>(dout),
                                      cast_matrix<Contract>(ds_final), chunk_size).template cast<double>();
  const auto mine = user.template cast<double>();
  GradientComparison out;
  out.factor = factor;
  out.floor = floor >= 0 ? floor : 8.0 * to_double(Contract(std::numeric_limits<Contract>::epsilon()));
  out.passed = true;
  const auto e = named_tensors(exact), l = named_tensors(low), u = named_tensors(mine);
  auto rel = [](const Matrix<double>& a, const Matrix<double>& b) {
    const double den = b.norm();
    return den > 0 ? (a - b).norm() / den : (a - b).norm();
  };
  for (size_t t = 0; t < e.size(); ++t) {
    GradientTensorComparison c;
    c.name = e[t].first;
    if (u[t].second->rows() != e[t].second->rows() || u[t].second->cols() != e[t].second->cols())
      detail::fail("compare_gradients: '", c.name, "' has shape ", u[t].second->rows(), " x ", u[t].second->cols(),
                   ", expected ", e[t].second->rows(), " x ", e[t].second->cols());
    detail::check_finite("compare_gradients", e[t].first, *u[t].second);
    c.error = rel(*u[t].second, *e[t].second);
    c.baseline = rel(*l[t].second, *e[t].second);
    c.bound = factor * std::max(c.baseline, out.floor);
    c.passed = c.error <= c.bound;
    out.passed = out.passed && c.passed;
    out.tensors.push_back(c);
  }
  return out;
}

}  // namespace gdr2
