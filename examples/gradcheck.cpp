// gradcheck: checking your own GDR-2 backward with gdr2::gradcheck and gdr2::compare_gradients
// (docs/gradcheck.md embeds this program's output verbatim; DocsExamples.GradcheckPageMatchesProgram checks it).
//
// "Your backward" here is a token-by-token VJP written the way a user writes one (derivations/04-backward.md,
// Eq. 4.1-4.5), templated on the scalar so that it can run in double and in float. Two plausible bugs can be
// switched on, to show what a failing check looks like:
//   missing-erase-term   the adjoint forgets the erase: dSbar = dS instead of dS - e (k^T dS)     (Eq. 4.3)
//   scalar-erase-gate    db_t is computed as if b_t were one scalar per token (KDA's rule), spread over the
//                        channels: db_t[i] = mean_j (de_t * k_t)[j]                               (Eq. 4.4)
//
// Output numbers are rounded (or stated as bounds where they are rounding noise) so that they are the same on
// every machine.
#include <cstdio>
#include <string>
#include <gdr2/backward.hpp>

namespace {

using gdr2::Index;

enum class Bug { none, missing_erase_term, scalar_erase_gate };

// ---- the user's backward -----------------------------------------------------------------------------------
template <class S>
gdr2::Gradients<S> my_backward(const gdr2::Head<S>& h, const gdr2::Matrix<S>& dout, const gdr2::Matrix<S>& ds_final,
                               Bug bug) {
  using Mat = gdr2::Matrix<S>;
  using Vec = gdr2::Vector<S>;
  gdr2::ForwardOptions keep;
  keep.keep_states = true;
  const auto f = gdr2::recurrent_forward(h, keep);  // the states S_0..S_T
  auto g = gdr2::Gradients<S>::zeros(h.T(), h.dk(), h.dv());
  Mat dS = ds_final;
  for (Index t = h.T() - 1; t >= 0; --t) {
    const Vec q = h.q.row(t).transpose(), k = h.k.row(t).transpose(), b = h.b.row(t).transpose();
    const Vec v = h.v.row(t).transpose(), w = h.w.row(t).transpose(), d_o = dout.row(t).transpose();
    const Vec alpha = gdr2::exp_of(h.g.row(t).transpose());
    const Mat& s_prev = f.states[static_cast<size_t>(t)];
    const Vec e = b.cwiseProduct(k), z = w.cwiseProduct(v);
    const Mat sbar = alpha.asDiagonal() * s_prev;
    const Vec delta = z - sbar.transpose() * e;
    dS += h.scale * q * d_o.transpose();                                   // o_t = scale S_t^T q_t
    g.dq.row(t) = (h.scale * f.states[static_cast<size_t>(t + 1)] * d_o).transpose();
    const Vec ddelta = dS.transpose() * k;                                  // S_t = Sbar_t + k_t delta_t^T
    Vec dk = dS * delta;
    const Vec dr = -ddelta;
    const Mat dsbar = bug == Bug::missing_erase_term ? dS : Mat(dS + e * dr.transpose());  // r_t = Sbar_t^T e_t
    const Vec de = sbar * dr;
    g.dw.row(t) = ddelta.cwiseProduct(v).transpose();                       // z_t = w_t * v_t
    g.dv.row(t) = ddelta.cwiseProduct(w).transpose();
    if (bug == Bug::scalar_erase_gate) g.db.row(t).setConstant(de.cwiseProduct(k).mean());
    else g.db.row(t) = de.cwiseProduct(k).transpose();                     // e_t = b_t * k_t
    dk += de.cwiseProduct(b);
    g.dk.row(t) = dk.transpose();
    g.dg.row(t) = alpha.cwiseProduct(dsbar.cwiseProduct(s_prev).rowwise().sum()).transpose();  // Sbar = D S
    dS = alpha.asDiagonal() * dsbar;
  }
  g.ds0 = dS;
  return g;
}

// ---- a small problem (any values work; these are seeded and printed-stable) --------------------------------
struct Problem {
  gdr2::Head<double> head;
  gdr2::Matrix<double> dout, ds_final;
};

Problem make_problem() {
  const Index T = 10, dk = 4, dv = 3;
  Problem p{gdr2::Head<double>::zeros(T, dk, dv), gdr2::Matrix<double>(T, dv), gdr2::Matrix<double>(dk, dv)};
  unsigned state = 12345;  // a tiny LCG: the example needs no library generator
  auto next = [&] { state = state * 1103515245u + 12345u; return static_cast<double>((state >> 8) & 0xFFFF) / 65536.0; };
  auto& h = p.head;
  for (Index t = 0; t < T; ++t) {
    for (Index i = 0; i < dk; ++i) {
      h.q(t, i) = next() - 0.5; h.k(t, i) = next() - 0.5;
      h.g(t, i) = -0.1 - 2.0 * next();  // decay in [exp(-2.1), exp(-0.1)]
      h.b(t, i) = next();               // erase gate in [0, 1]
    }
    h.k.row(t).normalize();
    for (Index j = 0; j < dv; ++j) { h.v(t, j) = next() - 0.5; h.w(t, j) = next(); p.dout(t, j) = next() - 0.5; }
  }
  for (Index i = 0; i < dk; ++i)
    for (Index j = 0; j < dv; ++j) { h.s0(i, j) = next() - 0.5; p.ds_final(i, j) = next() - 0.5; }
  return p;
}

std::string sci(double x, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*e", digits, x);
  return buf;
}

// Errors below 1e-13 (a tenth of the tolerance here) are rounding noise whose last digits vary between machines:
// print them as a bound.
std::string error_text(double e) { return e < 1e-13 ? "< 1e-13" : sci(e, 3); }

void print_report(const char* title, const gdr2::GradcheckReport& r) {
  std::printf("#### %s\n\n", title);
  std::printf("verdict: **%s** (largest error %s, tolerance %s)\n\n", r.passed ? "PASS" : "FAIL",
              error_text(r.max_error).c_str(), sci(r.tolerance, 2).c_str());
  std::printf("| tensor | max error | at [row, col] | your value | finite difference |\n|---|---|---|---|---|\n");
  for (const auto& t : r.tensors) {
    if (t.max_error < 1e-13) {
      std::printf("| %s | %s | | | |\n", t.name.c_str(), error_text(t.max_error).c_str());
    } else {
      std::printf("| %s | %s | [%lld, %lld] | %.6f | %.6f |\n", t.name.c_str(), error_text(t.max_error).c_str(),
                  static_cast<long long>(t.row), static_cast<long long>(t.col), t.checked, t.finite_difference);
    }
  }
  std::printf("\n");
}

}  // namespace

int main() {
  const Problem p = make_problem();
  std::printf("### Problem\n\nT = %lld, d_k = %lld, d_v = %lld, typical gates, random upstream gradients; the loss is "
              "L = sum(dout * o) + sum(ds_final * S_T).\n\n",
              static_cast<long long>(p.head.T()), static_cast<long long>(p.head.dk()), static_cast<long long>(p.head.dv()));

  std::printf("### 1. gdr2::gradcheck on your double-precision backward\n\n");
  auto with = [](Bug bug) {
    return [bug](const gdr2::Head<double>& h, const gdr2::Matrix<double>& d_o, const gdr2::Matrix<double>& d_s) {
      return my_backward(h, d_o, d_s, bug);
    };
  };
  const auto correct = gdr2::gradcheck(p.head, p.dout, p.ds_final, with(Bug::none));
  print_report("your backward", correct);
  const auto missing = gdr2::gradcheck(p.head, p.dout, p.ds_final, with(Bug::missing_erase_term));
  print_report("with the bug missing-erase-term", missing);
  const auto scalar = gdr2::gradcheck(p.head, p.dout, p.ds_final, with(Bug::scalar_erase_gate));
  print_report("with the bug scalar-erase-gate", scalar);

  std::printf("### 2. gdr2::compare_gradients on your backward run in float\n\n");
  const auto low = my_backward(p.head.cast<float>(), gdr2::cast_matrix<float>(p.dout),
                               gdr2::cast_matrix<float>(p.ds_final), Bug::none);
  const auto cmp = gdr2::compare_gradients<float>(p.head, p.dout, p.ds_final, low);
  std::printf("verdict: **%s** (factor %g, floor %s)\n\n", cmp.passed ? "PASS" : "FAIL", cmp.factor,
              sci(cmp.floor, 2).c_str());
  std::printf("| tensor | error vs exact | within bound |\n|---|---|---|\n");
  for (const auto& t : cmp.tensors)
    std::printf("| %s | %s | %s |\n", t.name.c_str(), t.error < 1e-5 ? "< 1e-5" : sci(t.error, 2).c_str(),
                t.passed ? "yes" : "NO");
  std::printf("\n");
  const auto low_bug = my_backward(p.head.cast<float>(), gdr2::cast_matrix<float>(p.dout),
                                   gdr2::cast_matrix<float>(p.ds_final), Bug::scalar_erase_gate);
  const auto cmp_bug = gdr2::compare_gradients<float>(p.head, p.dout, p.ds_final, low_bug);
  std::printf("with the bug scalar-erase-gate in float: **%s**", cmp_bug.passed ? "PASS" : "FAIL");
  for (const auto& t : cmp_bug.tensors)
    if (!t.passed) std::printf(" (%s: error %s)", t.name.c_str(), sci(t.error, 2).c_str());
  std::printf("\n\n");

  // Exit 0 only when the checks say what the page says: the correct backward passes, both bugs are caught.
  const bool as_expected = correct.passed && !missing.passed && !scalar.passed && cmp.passed && !cmp_bug.passed;
  std::printf("all checks as expected: %s\n", as_expected ? "yes" : "NO");
  return as_expected ? 0 : 1;
}
