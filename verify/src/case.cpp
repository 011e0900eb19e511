#include "case.hpp"

#include <cmath>
#include <random>
#include <sstream>
#include <stdexcept>

namespace gdr2v {

const char* name(Regime r) {
  switch (r) {
    case Regime::typical: return "typical";
    case Regime::weak_decay: return "weak_decay";
    case Regime::strong_decay: return "strong_decay";
    case Regime::erase_0_2: return "erase_0_2";
    case Regime::gate_edges: return "gate_edges";
    case Regime::raw_keys: return "raw_keys";
  }
  return "?";
}

std::string CaseSpec::text() const {
  std::ostringstream s;
  s << "seed=" << seed << " B=" << B << " T=" << T << " H=" << H << " HV=" << HV() << " K=" << K << " V=" << V
    << " h0=" << (with_h0 ? "yes" : "no") << " gates=" << name(regime);
  if (!lengths.empty()) {
    s << " lengths=";
    for (size_t i = 0; i < lengths.size(); ++i) s << (i ? "," : "") << lengths[i];
  }
  if (tie == Tie::kda) s << " tied=kda";
  if (tie == Tie::gated_deltanet) s << " tied=gated_deltanet";
  if (want_grad) s << " grad";
  return s.str();
}

namespace {

struct Sampler {
  std::mt19937_64 rng;
  explicit Sampler(std::uint64_t seed) : rng(seed) {}
  double uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); }
  double normal() { return std::normal_distribution<double>()(rng); }
  bool coin(double p) { return std::bernoulli_distribution(p)(rng); }

  // A query/key row: random direction; unit norm, or (raw_keys) a norm in [0.1, 1.2]. Norms above
  // sqrt(2) with erase up to 1 would make (I - k (b*k)^T) expansive and the state blow up: not a kernel bug.
  void key_row(double* row, Index K, Regime r) {
    double n2 = 0;
    for (Index d = 0; d < K; ++d) { row[d] = normal(); n2 += row[d] * row[d]; }
    const double norm = n2 > 0 ? std::sqrt(n2) : 1.0;
    const double target = r == Regime::raw_keys ? uniform(0.1, 1.2) : 1.0;
    for (Index d = 0; d < K; ++d) row[d] *= target / norm;
  }
  double log_decay(Regime r) {
    switch (r) {
      case Regime::weak_decay: return coin(0.2) ? 0.0 : uniform(-1e-3, 0.0);
      case Regime::strong_decay: return coin(0.1) ? 0.0 : (coin(0.1) ? -50.0 : uniform(-50.0, 0.0));
      case Regime::gate_edges: return coin(0.3) ? 0.0 : uniform(-5.0, -0.1);
      default: return uniform(-5.0, -0.1);
    }
  }
  double erase(Regime r) {
    switch (r) {
      case Regime::erase_0_2: return uniform(0.0, 2.0);
      case Regime::gate_edges: { const double c = uniform(0, 3); return c < 1 ? 0.0 : c < 2 ? 1.0 : uniform(0, 1); }
      default: return uniform(0.0, 1.0);
    }
  }
  double write(Regime r) {
    if (r == Regime::gate_edges) { const double c = uniform(0, 3); return c < 1 ? 0.0 : c < 2 ? 1.0 : uniform(0, 1); }
    return uniform(0.0, 1.0);
  }
};

}  // namespace

Case make_case(const CaseSpec& spec) {
  Index total = spec.T, B = spec.B;
  if (!spec.lengths.empty()) {
    B = 1;
    total = 0;
    for (int l : spec.lengths) total += l;
  }
  const Index H = spec.H, HV = spec.HV(), K = spec.K, V = spec.V;
  Case c;
  c.x = gdr2::Batch<double>::zeros(B, total, H, HV, K, V, false);
  if (!spec.lengths.empty()) {
    c.x.cu_seqlens.push_back(0);
    for (int l : spec.lengths) c.x.cu_seqlens.push_back(c.x.cu_seqlens.back() + l);
  }
  c.x.scale = round_to(DType::f32, 1.0 / std::sqrt(static_cast<double>(K)));
  Sampler s(spec.seed);
  std::vector<double> beta(static_cast<size_t>(H));
  for (Index bt = 0; bt < B * total; ++bt) {
    for (Index h = 0; h < H; ++h) {
      const size_t at = static_cast<size_t>((bt * H + h) * K);
      s.key_row(&c.x.q[at], K, spec.regime);
      s.key_row(&c.x.k[at], K, spec.regime);
      // Tied gates (spec section 3): KDA b = w = beta 1; Gated DeltaNet also g = a 1.
      beta[static_cast<size_t>(h)] = spec.regime == Regime::gate_edges ? (s.coin(0.5) ? 1.0 : 0.0) : s.uniform(0, 1);
      const double scalar_decay = s.log_decay(spec.regime);
      for (Index d = 0; d < K; ++d) {
        c.x.g[at + d] = spec.tie == Tie::gated_deltanet ? scalar_decay : s.log_decay(spec.regime);
        c.x.b[at + d] = spec.tie == Tie::none ? s.erase(spec.regime) : beta[static_cast<size_t>(h)];
      }
    }
    for (Index hv = 0; hv < HV; ++hv) {
      const size_t at = static_cast<size_t>((bt * HV + hv) * V);
      for (Index d = 0; d < V; ++d) {
        c.x.v[at + d] = s.normal();
        c.x.w[at + d] = spec.tie == Tie::none ? s.write(spec.regime) : beta[static_cast<size_t>(hv / spec.group)];
      }
    }
  }
  const auto nstate = static_cast<size_t>(c.N() * HV * K * V);
  if (spec.with_h0) {
    c.x.h0.resize(nstate);
    for (auto& e : c.x.h0) e = s.normal();
  }
  c.want_grad = spec.want_grad;
  if (spec.want_grad) {
    c.dout.resize(c.x.v.size());
    for (auto& e : c.dout) e = s.normal();
    c.dht.resize(nstate);
    for (auto& e : c.dht) e = s.normal();
  }
  return c;
}

namespace {
void round_all(std::vector<double>& xs, DType t) {
  for (auto& x : xs) x = round_to(t, round_to(DType::f32, x));
}
}  // namespace

Case round_inputs(const Case& c, DType io) {
  Case r = c;
  for (auto* v : {&r.x.q, &r.x.k, &r.x.b, &r.x.v, &r.x.w, &r.dout}) round_all(*v, io);
  for (auto* v : {&r.x.g, &r.x.h0, &r.dht}) round_all(*v, DType::f32);
  r.x.scale = round_to(DType::f32, r.x.scale);
  return r;
}

Case slice_tokens(const Case& c, Index t0, Index t1, const std::vector<double>& h0) {
  if (!c.x.cu_seqlens.empty()) throw std::logic_error("slice_tokens: varlen cases are not sliced");
  const auto& x = c.x;
  Case s;
  s.x = gdr2::Batch<double>::zeros(x.B, t1 - t0, x.H, x.HV, x.K, x.V, false);
  s.x.scale = x.scale;
  s.x.h0 = h0;
  s.want_grad = c.want_grad;
  auto copy = [&](const std::vector<double>& from, std::vector<double>& to, Index width) {
    for (Index b = 0; b < x.B; ++b)
      for (Index t = t0; t < t1; ++t)
        for (Index i = 0; i < width; ++i)
          to[static_cast<size_t>((b * (t1 - t0) + (t - t0)) * width + i)] = from[static_cast<size_t>((b * x.T + t) * width + i)];
  };
  copy(x.q, s.x.q, x.H * x.K); copy(x.k, s.x.k, x.H * x.K); copy(x.g, s.x.g, x.H * x.K); copy(x.b, s.x.b, x.H * x.K);
  copy(x.v, s.x.v, x.HV * x.V); copy(x.w, s.x.w, x.HV * x.V);
  if (c.want_grad) { s.dout.assign(s.x.v.size(), 0.0); copy(c.dout, s.dout, x.HV * x.V); s.dht = c.dht; }
  return s;
}

std::vector<NamedTensor> output_tensors(const Case& c, const Outputs& out) {
  const auto& x = c.x;
  const std::vector<std::int64_t> key{x.B, x.T, x.H, x.K}, value{x.B, x.T, x.HV, x.V}, state{c.N(), x.HV, x.K, x.V};
  std::vector<NamedTensor> list{{"o", &out.o, value}, {"ht", &out.ht, state}};
  if (out.has_grad) {
    list.push_back({"dq", &out.dq, key}); list.push_back({"dk", &out.dk, key});
    list.push_back({"dv", &out.dv, value}); list.push_back({"dg", &out.dg, key});
    list.push_back({"db", &out.db, key}); list.push_back({"dw", &out.dw, value});
    // dh0 only when the case has an initial state: a kernel called without one has no tensor to
    // differentiate (PyTorch leaves no .grad), so its absence is not an error (docs/ports.md).
    if (!c.x.h0.empty()) list.push_back({"dh0", &out.dh0, state});
  }
  return list;
}

namespace {

// [N, HV, K, V] <-> [N, HV, V, K] (ports may declare the transposed state layout).
std::vector<double> transpose_states(const std::vector<double>& s, Index NHV, Index rows, Index cols) {
  std::vector<double> t(s.size());
  for (Index n = 0; n < NHV; ++n)
    for (Index i = 0; i < rows; ++i)
      for (Index j = 0; j < cols; ++j)
        t[static_cast<size_t>((n * cols + j) * rows + i)] = s[static_cast<size_t>((n * rows + i) * cols + j)];
  return t;
}


}  // namespace

SafeTensors input_file(const Case& c, DType io, bool state_vk) {
  const auto& x = c.x;
  const std::vector<std::int64_t> key{x.B, x.T, x.H, x.K}, value{x.B, x.T, x.HV, x.V};
  const std::vector<std::int64_t> state = state_vk ? std::vector<std::int64_t>{c.N(), x.HV, x.V, x.K}
                                                   : std::vector<std::int64_t>{c.N(), x.HV, x.K, x.V};
  auto states = [&](const std::vector<double>& s) { return state_vk ? transpose_states(s, c.N() * x.HV, x.K, x.V) : s; };
  SafeTensors f;
  f.tensors["q"] = Tensor::from_double(io, key, x.q);
  f.tensors["k"] = Tensor::from_double(io, key, x.k);
  f.tensors["g"] = Tensor::from_double(DType::f32, key, x.g);
  f.tensors["b"] = Tensor::from_double(io, key, x.b);
  f.tensors["v"] = Tensor::from_double(io, value, x.v);
  f.tensors["w"] = Tensor::from_double(io, value, x.w);
  if (!x.h0.empty()) f.tensors["h0"] = Tensor::from_double(DType::f32, state, states(x.h0));
  if (!x.cu_seqlens.empty()) {
    std::vector<double> offsets(x.cu_seqlens.begin(), x.cu_seqlens.end());
    f.tensors["cu_seqlens"] = Tensor::from_double(DType::i64, {static_cast<std::int64_t>(offsets.size())}, offsets);
  }
  if (c.want_grad) {
    f.tensors["do"] = Tensor::from_double(io, value, c.dout);
    f.tensors["dht"] = Tensor::from_double(DType::f32, state, states(c.dht));
  }
  f.metadata["scale"] = number_text(x.scale);
  f.metadata["want_grad"] = c.want_grad ? "1" : "0";
  f.metadata["state_layout"] = state_vk ? "VK" : "KV";
  return f;
}

Outputs read_output_file(const SafeTensors& f, const Case& c, bool state_vk) {
  const auto& x = c.x;
  const std::vector<std::int64_t> key{x.B, x.T, x.H, x.K}, value{x.B, x.T, x.HV, x.V};
  const std::vector<std::int64_t> state = state_vk ? std::vector<std::int64_t>{c.N(), x.HV, x.V, x.K}
                                                   : std::vector<std::int64_t>{c.N(), x.HV, x.K, x.V};
  auto get = [&](const std::string& name, const std::vector<std::int64_t>& shape) {
    const Tensor& t = f.at(name);
    if (t.shape != shape)
      throw format_error("output tensor '" + name + "' has shape " + shape_text(t.shape) + ", expected " +
                         shape_text(shape));
    if (t.dtype == DType::i64 || t.dtype == DType::i32)
      throw format_error(std::string("output tensor '") + name + "' has integer dtype " + safetensors_name(t.dtype));
    return t.to_double();
  };
  auto states = [&](std::vector<double> s) { return state_vk ? transpose_states(s, c.N() * x.HV, x.V, x.K) : s; };
  Outputs out;
  out.o = get("o", value);
  out.ht = states(get("ht", state));
  if (c.want_grad) {
    out.has_grad = true;
    out.dq = get("dq", key); out.dk = get("dk", key); out.dg = get("dg", key); out.db = get("db", key);
    out.dv = get("dv", value); out.dw = get("dw", value);
    if (!c.x.h0.empty()) out.dh0 = states(get("dh0", state));
  }
  return out;
}

Case case_from_file(const SafeTensors& f) {
  const Tensor& q = f.at("q");
  const Tensor& v = f.at("v");
  if (q.shape.size() != 4 || v.shape.size() != 4)
    throw format_error("q and v must be 4-d ([B,T,H,K], [B,T,HV,V]), got " + shape_text(q.shape) + " and " +
                       shape_text(v.shape));
  Case c;
  c.x = gdr2::Batch<double>::zeros(q.shape[0], q.shape[1], q.shape[2], v.shape[2], q.shape[3], v.shape[3], false);
  c.x.q = q.to_double(); c.x.k = f.at("k").to_double(); c.x.g = f.at("g").to_double(); c.x.b = f.at("b").to_double();
  c.x.v = v.to_double(); c.x.w = f.at("w").to_double();
  if (f.has("h0")) c.x.h0 = f.at("h0").to_double();
  if (f.has("cu_seqlens")) {
    for (double o : f.at("cu_seqlens").to_double()) c.x.cu_seqlens.push_back(static_cast<std::int64_t>(o));
  }
  c.x.scale = std::stod(f.meta("scale", "0"));
  c.want_grad = f.meta("want_grad", "0") == "1";
  if (c.want_grad) { c.dout = f.at("do").to_double(); c.dht = f.at("dht").to_double(); }
  try {
    gdr2::validate(c.x, "replay");
  } catch (const std::exception& e) {
    throw format_error(std::string("inconsistent case file: ") + e.what());
  }
  return c;
}

std::string number_text(double x) {
  std::ostringstream s;
  s.precision(17);
  s << x;
  return s.str();
}

}  // namespace gdr2v
