#include "properties.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <filesystem>
#include <limits>
#include <sstream>
#include <rapidcheck.h>
#include <rapidcheck/detail/Configuration.h>
#include <rapidcheck/detail/TestListenerAdapter.h>
#include <fcntl.h>
#include <unistd.h>

namespace gdr2v {

const char* name(Property p) {
  switch (p) {
    case Property::forward: return "forward";
    case Property::grad: return "grad";
    case Property::kda: return "collapse-kda";
    case Property::gated_deltanet: return "collapse-gdn";
    case Property::split: return "split-state";
    case Property::deterministic: return "deterministic";
  }
  return "?";
}

std::optional<Property> parse_property(const std::string& s) {
  for (Property p : kAllProperties)
    if (s == name(p)) return p;
  return std::nullopt;
}

const char* name(Profile p) {
  switch (p) {
    case Profile::small: return "small";
    case Profile::paper: return "paper";
    case Profile::large: return "large";
  }
  return "?";
}

std::optional<Profile> parse_profile(const std::string& s) {
  for (Profile p : {Profile::small, Profile::paper, Profile::large})
    if (s == name(p)) return p;
  return std::nullopt;
}

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// ---- Evaluation of one case ------------------------------------------------------------------------------

using Bases = std::vector<const std::vector<double>*>;

void check_tensor(Evaluation& e, const std::string& tensor, const std::vector<double>& actual,
                  const std::vector<double>& expected, const Bases& bases, const Tolerance& tol,
                  double baseline_multiplier = 1) {
  TensorCheck t;
  t.name = tensor;
  t.err = relative_error(actual, expected);
  // The baseline is the worst error of the reference forms evaluated in the contract's precision. A form that
  // overflowed (or gave NaN) there says nothing about the error the algorithm allows, so it is left out; if every
  // form overflowed, the floor alone bounds the target (an infinite bound would pass anything).
  t.baseline = 0;
  for (const auto* base : bases) {
    const double b = baseline_multiplier * relative_error(*base, expected);
    if (std::isfinite(b)) t.baseline = std::max(t.baseline, b);
  }
  const double bound = std::max(t.baseline, tol.floor);
  t.ratio = std::isfinite(t.err) ? t.err / bound : std::numeric_limits<double>::infinity();
  if (!(t.ratio <= tol.factor)) {
    std::ostringstream s;
    s.precision(3);
    if (!std::isfinite(t.err)) s << tensor << ": non-finite value or wrong size in the target's output";
    else
      s << tensor << ": err " << std::scientific << t.err << " > factor " << std::defaultfloat << tol.factor
        << " x max(baseline " << std::scientific << t.baseline << ", floor " << tol.floor << ") (ratio "
        << std::defaultfloat << t.ratio << ")";
    if (e.pass) e.message = s.str();
    else e.message += "; " + s.str();
    e.pass = false;
  }
  e.ratio = std::max(e.ratio, t.ratio);
  e.tensors.push_back(t);
}

void compare_outputs(Evaluation& e, const Case& c, const Outputs& actual, const Outputs& expected,
                     const std::vector<Outputs>& bases, const Tolerance& tol, bool forward_only = false) {
  Outputs a_out = actual, x_out = expected;
  if (forward_only) a_out.has_grad = x_out.has_grad = false;
  const auto a = output_tensors(c, a_out), x = output_tensors(c, x_out);
  static const std::vector<double> none;
  for (size_t i = 0; i < x.size(); ++i) {
    Bases b;
    for (const auto& base : bases) {
      const auto list = output_tensors(c, base);
      b.push_back(i < list.size() ? list[i].values : &none);
    }
    check_tensor(e, x[i].name, i < a.size() ? *a[i].values : none, *x[i].values, b, tol);
  }
}

bool bitwise_equal(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(double)) != 0 && !(std::isnan(a[i]) && std::isnan(b[i]))) return false;
  return true;
}

std::vector<double> round_states(std::vector<double> s) {
  for (auto& x : s) x = round_to(DType::f32, x);
  return s;
}

}  // namespace

Evaluation evaluate(Target& target, Property p, Contract contract, const Case& c, Index split_at,
                    const std::string& label) {
  const Tolerance tol = tolerance_of(contract);
  const DType io = io_dtype(contract);
  Evaluation e;
  switch (p) {
    case Property::forward:
    case Property::grad: {
      e.actual = target.run(c, io, label);
      e.expected = reference_double(c);
      compare_outputs(e, c, e.actual, e.expected, baselines(contract, c), tol);
      break;
    }
    case Property::kda:
    case Property::gated_deltanet: {
      e.actual = target.run(c, io, label);
      const TiedReference tied = tied_reference(p == Property::kda ? Tie::kda : Tie::gated_deltanet, c);
      const std::vector<Outputs> bases = baselines(contract, c);
      e.expected = tied.forward;
      compare_outputs(e, c, e.actual, e.expected, bases, tol, true);
      if (c.want_grad) {
        // Eq. 48: dL/dbeta_t = sum_i dL/db_t[i] + sum_j dL/dw_t[j], against an independent KDA backward.
        std::vector<std::vector<double>> base_dbeta;
        for (const auto& b : bases) base_dbeta.push_back(dbeta_eq48(c, b));
        Bases b;
        for (const auto& d : base_dbeta) b.push_back(&d);
        check_tensor(e, "dbeta", dbeta_eq48(c, e.actual), tied.dbeta, b, tol);
        if (p == Property::gated_deltanet) {
          // The scalar decay: dL/d(log a_t) = sum_i dL/dg_t[i], against the same independent backward.
          std::vector<std::vector<double>> base_da;
          for (const auto& base : bases) base_da.push_back(dlog_decay_sum(c, base));
          Bases bd;
          for (const auto& d : base_da) bd.push_back(&d);
          check_tensor(e, "dlog_a", dlog_decay_sum(c, e.actual), tied.dlog_decay, bd, tol);
        }
      }
      break;
    }
    case Property::split: {
      // Two calls [0, s) and [s, T) carrying the fp32 final state must be as accurate as one call: the joined
      // result is held to the forward's bound against the double reference (a direct two-calls-vs-one-call
      // comparison would need the sum of two such bounds, and be weaker).
      Case whole = c;
      whole.want_grad = false;
      e.expected = target.run(whole, io, label);
      const auto& x = whole.x;
      // Two calls [0, s) and [s, T), the state carried in fp32, the outputs put back together.
      const auto two_calls = [&](const std::function<Outputs(const Case&, const std::string&)>& run) {
        const Outputs first = run(slice_tokens(whole, 0, split_at, whole.x.h0), " (first part)");
        const Outputs second = run(slice_tokens(whole, split_at, whole.x.T, round_states(first.ht)), " (second part)");
        Outputs joined;
        joined.o.assign(x.v.size(), 0.0);
        const Index width = x.HV * x.V, T1 = split_at, T2 = x.T - split_at;
        for (Index b = 0; b < x.B; ++b) {
          for (Index t = 0; t < T1 && first.o.size() == static_cast<size_t>(x.B * T1 * width); ++t)
            for (Index i = 0; i < width; ++i)
              joined.o[static_cast<size_t>((b * x.T + t) * width + i)] = first.o[static_cast<size_t>((b * T1 + t) * width + i)];
          for (Index t = 0; t < T2 && second.o.size() == static_cast<size_t>(x.B * T2 * width); ++t)
            for (Index i = 0; i < width; ++i)
              joined.o[static_cast<size_t>((b * x.T + T1 + t) * width + i)] = second.o[static_cast<size_t>((b * T2 + t) * width + i)];
        }
        joined.ht = second.ht;
        return joined;
      };
      e.actual = two_calls([&](const Case& part, const std::string& which) { return target.run(part, io, label + which); });
      // The carried result must be as accurate as a forward: against the double reference, the forward's bound
      // (the one-call result e.expected is the forward property's business, and is kept for the repro file).
      // Baseline: the reference in the contract's precision, in its three forms, on one call and on the same two calls
      // (chunk boundaries move with the split, and a full last chunk under strong decay is a harder case).
      const Outputs truth = reference_double(whole);
      std::vector<Outputs> bases = baselines(contract, whole);
      for (auto [form, chunk] : {std::pair{gdr2::Form::chunkwise, Index{64}}, std::pair{gdr2::Form::chunkwise, Index{16}},
                                 std::pair{gdr2::Form::recurrent, Index{64}}})
        bases.push_back(two_calls([&, form = form, chunk = chunk](const Case& part, const std::string&) {
          return reference_in(precision_of(contract), form, part, chunk);
        }));
      compare_outputs(e, whole, e.actual, truth, bases, tol, true);
      if (!e.pass) {
        std::ostringstream s;
        s.precision(3);
        s << " [two calls carrying the state, split after " << split_at << " of " << x.T
          << " tokens; one call differs from them by " << relative_error(e.actual.o, e.expected.o) << " (o), "
          << relative_error(e.actual.ht, e.expected.ht) << " (ht)]";
        e.message += s.str();
      }
      e.expected = truth;
      break;
    }
    case Property::deterministic: {
      e.expected = target.run(c, io, label);
      e.actual = target.run(c, io, label + " (second run)");
      const auto a = output_tensors(c, e.actual), x = output_tensors(c, e.expected);
      for (size_t i = 0; i < x.size(); ++i) {
        TensorCheck t;
        t.name = x[i].name;
        const bool same = i < a.size() && bitwise_equal(*a[i].values, *x[i].values);
        t.err = same ? 0 : relative_error(*a[i].values, *x[i].values);
        e.tensors.push_back(t);
        if (!same) {
          e.pass = false;
          e.message += (e.message.empty() ? "" : "; ") + x[i].name + " differs between two runs (rel. " +
                       std::to_string(t.err) + ")";
        }
      }
      break;
    }
  }
  return e;
}

namespace {

// ---- Generators ------------------------------------------------------------------------------------------

struct Limits {
  int max_T, max_B, max_H, max_group;
  std::vector<int> dims;
  double work;       // cap on B * HV * T * K * V (T is reduced to fit): keeps a case's cost bounded
  bool varlen;
};

Limits limits_for(Profile profile, const Capabilities& caps) {
  Limits l;
  switch (profile) {
    case Profile::small: l = {160, 2, 2, 2, {16, 32, 64}, 6e5, caps.varlen}; break;
    case Profile::paper: l = {1100, 2, 4, 2, {64, 128}, 3e7, caps.varlen}; break;
    case Profile::large: l = {4096, 4, 4, 4, {16, 32, 64, 128, 256}, 5e8, caps.varlen}; break;
  }
  if (!caps.gva) l.max_group = 1;
  return l;
}

rc::Gen<CaseSpec> gen_spec(const Limits& lim, const Capabilities& caps, Property p, bool want_grad) {
  std::vector<int> kdims, vdims;
  for (int d : lim.dims) {
    if (d <= caps.max_k) kdims.push_back(d);
    if (d <= caps.max_v) vdims.push_back(d);
  }
  if (kdims.empty()) kdims.push_back(std::min(16, caps.max_k));
  if (vdims.empty()) vdims.push_back(std::min(16, caps.max_v));
  const int max_T = lim.max_T;
  // T: anything in [0, max_T] (mostly non-multiples of 64), and a third of the time an edge: 0, 1, 2, a chunk
  // boundary +- 1. Drawn as (edge?, which edge, T) so that shrinking goes to "no edge" and then shrinks T itself.
  const std::vector<int> edges{0, 1, 2, 63, 64, 65, std::min(127, max_T), std::min(128, max_T), std::min(129, max_T)};
  const bool varlen = lim.varlen && p != Property::split;
  auto shape = rc::gen::apply(
      [=](int T, bool edge, int which, int B, int H, int group, int ki, int vi) {
        CaseSpec s;
        s.T = edge ? edges[static_cast<size_t>(which)] : T;
        s.B = B; s.H = H; s.group = group;
        s.K = kdims[static_cast<size_t>(ki)];
        s.V = vdims[static_cast<size_t>(vi)];
        return s;
      },
      rc::gen::inRange(0, max_T + 1), rc::gen::weightedOneOf<bool>({{2, rc::gen::just(false)}, {1, rc::gen::just(true)}}),
      rc::gen::inRange(0, static_cast<int>(edges.size())), rc::gen::inRange(1, lim.max_B + 1),
      rc::gen::inRange(1, lim.max_H + 1), rc::gen::inRange(1, lim.max_group + 1),
      rc::gen::inRange(0, static_cast<int>(kdims.size())), rc::gen::inRange(0, static_cast<int>(vdims.size())));
  return rc::gen::apply(
      [=](CaseSpec s, std::uint64_t seed, bool h0, int regime, int packing, int nseq, int l2, int l3, int split) {
        const bool packed = packing == 3;  // one case in four; drawn as an integer so that it shrinks to unpacked
        s.seed = seed;
        s.with_h0 = h0;
        s.regime = kAllRegimes[regime];
        if (varlen && packed) {
          // The first sequence takes the shape's T, so shrinking T shrinks a packed case too, and shrinking
          // "packed" to false keeps that sequence's length (a one-sequence pack then becomes the plain case).
          const int all[3] = {s.T, l2, l3};
          s.lengths.assign(all, all + nseq);
          s.B = 1;
        }
        s.want_grad = want_grad;
        s.tie = p == Property::kda ? Tie::kda : p == Property::gated_deltanet ? Tie::gated_deltanet : Tie::none;
        s.split_permille = split;
        // Work cap: shrink T (or the lengths) until B * HV * T * K * V fits.
        const double per_token = static_cast<double>(s.B) * s.HV() * s.K * s.V;
        const int cap = std::max(1, static_cast<int>(lim.work / per_token));
        if (s.lengths.empty()) s.T = std::min(s.T, cap);
        else {
          s.T = 0;
          for (int& l : s.lengths) s.T += (l = std::min(l, cap / nseq));
        }
        return s;
      },
      shape, rc::gen::arbitrary<std::uint64_t>(), rc::gen::arbitrary<bool>(),
      rc::gen::inRange(0, static_cast<int>(std::size(kAllRegimes))),
      rc::gen::inRange(0, 4), rc::gen::inRange(1, 4),
      rc::gen::inRange(0, max_T / 2 + 1), rc::gen::inRange(0, max_T / 2 + 1), rc::gen::inRange(0, 1001));
}

// RapidCheck prints "Using configuration: ..." the first time its global configuration loads; gdr2-verify
// passes its own parameters, so that line is noise: load it once with stderr silenced.
void load_rapidcheck_configuration_quietly() {
  static const bool loaded = [] {
    std::fflush(stderr);
    const int saved = dup(STDERR_FILENO), devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) { dup2(devnull, STDERR_FILENO); close(devnull); }
    try { rc::detail::configuration(); } catch (...) {}
    if (saved >= 0) { dup2(saved, STDERR_FILENO); close(saved); }
    return true;
  }();
  (void)loaded;
}

// A split after 0 or after all tokens would be one call in disguise: with T >= 2 both parts keep a token.
Index split_point(const CaseSpec& s) {
  const Index T = s.T, at = T * s.split_permille / 1000;
  return T >= 2 ? std::clamp<Index>(at, 1, T - 1) : at;
}

double median_of(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

std::string sanitize(std::string s) {
  for (char& ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '-' && ch != '_') ch = '_';
  return s;
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char ch : s) out += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return out + "'";
}

// The repro file: the case's inputs as the port protocol writes them (so it can be fed to a port by hand),
// expected_* (the reference) and actual_* (the target) in F64, and metadata to replay it.
std::string write_repro(const RunOptions& o, const Target& target, Property p, Contract contract, const Case& c,
                        const CaseSpec& spec, const Evaluation& e, const Tolerance& tol) {
  std::filesystem::create_directories(o.repro_dir);
  const std::string path = (std::filesystem::path(o.repro_dir) /
                            (sanitize(target.name()) + "-" + name(p) + "-seed" + std::to_string(o.seed) + ".safetensors"))
                               .string();
  SafeTensors f = input_file(c, io_dtype(contract), false);
  const auto add = [&](const std::string& prefix, const Outputs& out) {
    for (const auto& t : output_tensors(c, out))
      if (t.values->size() == static_cast<size_t>(std::accumulate(t.shape.begin(), t.shape.end(), std::int64_t{1},
                                                                   std::multiplies<>())))
        f.tensors[prefix + t.name] = Tensor::from_double(DType::f64, t.shape, *t.values);
  };
  add("expected_", e.expected);
  add("actual_", e.actual);
  f.metadata["target"] = target.name();
  f.metadata["property"] = name(p);
  f.metadata["contract"] = gdr2v::name(contract);
  f.metadata["spec"] = spec.text();
  f.metadata["split_at"] = std::to_string(split_point(spec));
  f.metadata["factor"] = std::to_string(tol.factor);
  f.metadata["floor"] = number_text(tol.floor);  // to_string would write 5.96e-08 as "0.000000"
  f.metadata["failure"] = e.message;
  if (!o.port_cmd.empty()) f.metadata["port_cmd"] = o.port_cmd;
  std::string replay = o.replay_prefix + " replay " + shell_quote(path);
  if (!o.port_cmd.empty()) replay += " --port-cmd " + shell_quote(o.port_cmd);
  f.metadata["replay"] = replay;
  f.save(path);
  return path;
}

}  // namespace

std::vector<PropertyResult> run_target(Target& target, const RunOptions& o) {
  load_rapidcheck_configuration_quietly();
  const Capabilities caps = target.capabilities();
  const Contract contract = o.contract.value_or(target.default_contract());
  const Tolerance tol = tolerance_of(contract);
  const DType io = io_dtype(contract);
  std::vector<PropertyResult> results;
  const bool io_supported = std::find(caps.dtypes.begin(), caps.dtypes.end(), io) != caps.dtypes.end();
  int property_index = 0;
  for (Property p : kAllProperties) {
    ++property_index;
    if (!o.only.empty() && std::find(o.only.begin(), o.only.end(), p) == o.only.end()) continue;
    PropertyResult r;
    r.target = target.name();
    r.property = name(p);
    r.contract = gdr2v::name(contract);
    r.factor = tol.factor;
    r.floor = tol.floor;
    r.seed = o.seed + static_cast<std::uint64_t>(property_index) * 1000003ULL;
    const bool grad_possible = caps.grad;
    if (!io_supported) {  // asked for a contract the target cannot run: an error, not a silent skip
      r.status = "error";
      r.note = std::string("target does not take ") + short_name(io) + " inputs (contract " + r.contract +
               "); its handshake allows other dtypes only";
    } else if (p == Property::grad && !o.grad) {
      r.status = "skipped";
      r.note = "gradients not requested (--grad)";
    } else if (p == Property::grad && !grad_possible) {
      r.status = "skipped";
      r.note = "target has no backward";
    }
    if (!r.status.empty()) {
      results.push_back(r);
      continue;
    }
    const bool want_grad = p == Property::grad ||
                           (o.grad && grad_possible && (p == Property::kda || p == Property::gated_deltanet ||
                                                        p == Property::deterministic));
    const Limits lim = limits_for(o.profile, caps);
    const auto gen = gen_spec(lim, caps, p, want_grad);

    // State shared with the property lambda. RapidCheck runs the cases in order, then shrinks the first
    // failure: every call after the first failure is a shrinking step.
    std::vector<double> ratios;
    bool failed = false, stopped = false;
    int shrink_steps = 0, done = 0;
    std::optional<CaseSpec> last_failing;
    std::string error;
    Clock::time_point failed_at{};
    const auto started = Clock::now();
    static const bool trace = std::getenv("GDR2_VERIFY_TRACE") != nullptr;  // print every case (debugging)
    auto property = [&]() {
      const CaseSpec spec = *gen;
      if (stopped) return;
      if (failed && seconds_since(failed_at) > o.shrink_budget_s) { stopped = true; return; }
      const Case c = round_inputs(make_case(spec), io);
      const std::string label = "case {" + spec.text() + "} of " + target.name() + "/" + name(p);
      if (trace) std::fprintf(stderr, "%s%s\n", failed ? "[shrinking] " : "", label.c_str());
      if (o.progress && !failed)
        std::fprintf(stderr, "\r\033[K%s %s: case %d/%d", target.name().c_str(), name(p), done + 1, o.cases);
      if (o.progress && failed)
        std::fprintf(stderr, "\r\033[K%s %s: shrinking the failure (step %d)", target.name().c_str(), name(p), shrink_steps);
      Evaluation e;
      try {
        e = evaluate(target, p, contract, c, split_point(spec), label);
      } catch (const target_error& ex) {
        error = ex.what();
        stopped = true;
        return;
      } catch (const std::exception& ex) {
        error = std::string("internal error on ") + label + ": " + ex.what();
        stopped = true;
        return;
      }
      if (trace) {
        std::fprintf(stderr, "  -> ratio %.3g%s", e.ratio, e.pass ? "" : " FAIL");
        for (const auto& t : e.tensors) std::fprintf(stderr, " %s:%.3g", t.name.c_str(), t.ratio);
        std::fprintf(stderr, "\n");
      }
      if (!failed) {
        ++done;
        if (p != Property::deterministic) ratios.push_back(e.ratio);
        if (p == Property::deterministic && e.pass) ratios.push_back(0);
      } else {
        ++shrink_steps;
      }
      if (p == Property::deterministic) {  // reported only: never a counterexample
        if (!e.pass && r.note.empty()) r.note = "not bitwise reproducible: " + e.message + " on {" + spec.text() + "}";
        return;
      }
      if (!e.pass) {
        if (!failed) failed_at = Clock::now();
        failed = true;
        last_failing = spec;
        RC_FAIL(e.message);
      }
    };
    rc::detail::TestParams params;
    params.seed = r.seed;
    params.maxSuccess = o.cases;
    params.maxSize = 100;
    params.disableShrinking = false;
    rc::detail::TestMetadata metadata;
    metadata.id = metadata.description = target.name() + "/" + name(p);
    rc::detail::TestListenerAdapter quiet;
    const auto result = rc::detail::checkTestable(property, metadata, params, quiet);
    r.seconds = seconds_since(started);
    if (o.progress) std::fprintf(stderr, "\r\033[K");
    r.cases = done;
    if (p == Property::deterministic) {
      r.passed = static_cast<int>(ratios.size());
      r.status = "info";
      if (r.note.empty()) r.note = "bitwise reproducible on every case";
      else if (!caps.deterministic) r.note += " (the target declares itself non-deterministic)";
    } else {
      r.passed = done - (failed ? 1 : 0);
      if (!ratios.empty()) {
        r.worst = *std::max_element(ratios.begin(), ratios.end());
        r.median = median_of(ratios);
      }
      r.status = failed ? "FAIL" : "pass";
    }
    if (!error.empty() && !failed) {
      r.status = "error";
      r.note = error;
    }
    std::string rc_error;
    if (result.template is<rc::detail::Error>()) rc_error = result.template get<rc::detail::Error>().description;
    if (!rc_error.empty() && error.empty() && !failed) {
      r.status = "error";
      r.note = "RapidCheck: " + rc_error;
    }
    if (failed && last_failing) {
      Failure f;
      f.spec = last_failing->text();
      f.shrink_steps = shrink_steps;
      const Case c = round_inputs(make_case(*last_failing), io);
      try {
        f.eval = evaluate(target, p, contract, c, split_point(*last_failing), "the shrunk case {" + f.spec + "}");
        f.repro_path = write_repro(o, target, p, contract, c, *last_failing, f.eval, tol);
        f.replay_command = o.replay_prefix + " replay " + shell_quote(f.repro_path) +
                           (o.port_cmd.empty() ? "" : " --port-cmd " + shell_quote(o.port_cmd));
      } catch (const std::exception& ex) {
        f.eval.message = std::string("re-running the shrunk case failed: ") + ex.what();
      }
      if (f.eval.pass && f.eval.message.empty()) f.eval.message = "the shrunk case passed when re-run (flaky target?)";
      if (!error.empty()) r.note = "while shrinking: " + error;
      r.failures.push_back(std::move(f));
    }
    results.push_back(std::move(r));
  }
  return results;
}

PropertyResult replay(Target& target, const std::string& file, std::optional<Contract> contract_override) {
  const SafeTensors f = SafeTensors::load(file);
  const Case c = case_from_file(f);
  const auto p = parse_property(f.meta("property", "forward"));
  if (!p) throw format_error("'" + file + "': unknown property '" + f.meta("property") + "'");
  const auto stored = parse_contract(f.meta("contract", "fp32"));
  const Contract contract = contract_override.value_or(stored.value_or(target.default_contract()));
  const Tolerance tol = tolerance_of(contract);
  PropertyResult r;
  r.target = target.name();
  r.property = name(*p);
  r.contract = gdr2v::name(contract);
  r.factor = tol.factor;
  r.floor = tol.floor;
  const auto started = Clock::now();
  // The stored inputs are already rounded to the stored contract's dtype; rounding again to another
  // contract's dtype is what that target would read.
  const Case rounded = round_inputs(c, io_dtype(contract));
  const Index split_at = std::stoll(f.meta("split_at", "0"));
  Failure failure;
  failure.spec = f.meta("spec", "(from file)");
  try {
    failure.eval = evaluate(target, *p, contract, rounded, std::min<Index>(split_at, c.x.T), "replayed case " + file);
  } catch (const target_error& e) {
    r.status = "error";
    r.note = e.what();
    return r;
  }
  r.seconds = seconds_since(started);
  r.cases = 1;
  r.worst = r.median = failure.eval.ratio;
  if (*p == Property::deterministic) {
    r.status = "info";
    r.passed = failure.eval.pass ? 1 : 0;
    r.note = failure.eval.pass ? "bitwise reproducible" : failure.eval.message;
  } else if (failure.eval.pass) {
    r.status = "pass";
    r.passed = 1;
  } else {
    r.status = "FAIL";
    failure.repro_path = file;
    r.failures.push_back(std::move(failure));
  }
  return r;
}

}  // namespace gdr2v
