// gdr2-example-port: a small, complete port of the GDR-2 to the gdr2-verify protocol (docs/ports.md), written
// the way a kernel port would be: it reads the input file, runs its own token-by-token forward in fp32 and its
// own token-by-token backward (spec section 6) in double, and writes the outputs.
//
// It also carries the seeded bugs of the mutation tests (--bug NAME) and protocol misbehaviours (--misbehave
// NAME) so that CI exercises both the numerical checks and the protocol's error paths:
//   --bug erase-k            the read uses k instead of e = b * k             (r_t = Sbar_t^T k_t)
//   --bug write-gate-on-read the write gate also multiplies the read          (S_t = Sbar_t + k_t (w * (v - r))^T)
//   --bug decay-after-edit   the decay is applied after the edit              (S_t = D_t (S_{t-1} + k_t (z_t - S_{t-1}^T e_t)^T))
//   --bug chunk-off-by-one   the first token of every 64-token chunk after the first decays with g_{t-1}
//   --bug scalar-postscale   backward: db_t, dw_t post-scaled as if b, w were scalars (KDA's rule; spec section 6)
//   --bug drop-dh0           backward: the gradient of the initial state is returned as zeros
//   --misbehave crash|hang|garbage|wrong-shape|missing-tensor|error|bad-handshake|hang-handshake [--after N]
#include <Eigen/Dense>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include "case.hpp"
#include "safetensors.hpp"

namespace {

using gdr2::Index;
using Mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Vec = Eigen::VectorXd;
using VecF = Eigen::VectorXf;

struct Settings {
  std::string bug = "none", misbehave = "none", dtypes = "f32,bf16,f16";
  int after = 0;
  bool grad = true;
};

// Forward of one (sequence, value head) in fp32: o (T x V), final state (K x V).
void forward_head(const gdr2::Head<double>& h, const std::string& bug, MatF& o, MatF& state) {
  const Index T = h.T();
  state = h.s0.cast<float>();
  o.resize(T, h.dv());
  const float scale = static_cast<float>(h.scale);
  for (Index t = 0; t < T; ++t) {
    const Index decay_row = (bug == "chunk-off-by-one" && t > 0 && t % 64 == 0) ? t - 1 : t;
    const VecF alpha = h.g.row(decay_row).transpose().cast<float>().array().exp().matrix();
    const VecF k = h.k.row(t).transpose().cast<float>(), b = h.b.row(t).transpose().cast<float>();
    const VecF v = h.v.row(t).transpose().cast<float>(), w = h.w.row(t).transpose().cast<float>();
    const VecF e = b.cwiseProduct(k), z = w.cwiseProduct(v);  // Eq. 8: erase and write vectors
    if (bug == "decay-after-edit") {
      const VecF r = state.transpose() * e;
      state += k * (z - r).transpose();
      state = alpha.asDiagonal() * state;
    } else {
      state = alpha.asDiagonal() * state;                       // Sbar_t = D_t S_{t-1}
      const VecF r = state.transpose() * (bug == "erase-k" ? k : e);  // r_t = Sbar_t^T e_t
      const VecF delta = bug == "write-gate-on-read" ? VecF(w.cwiseProduct(v - r)) : VecF(z - r);
      state += k * delta.transpose();                            // S_t = Sbar_t + k_t (z_t - r_t)^T
    }
    o.row(t) = scale * (state.transpose() * h.q.row(t).transpose().cast<float>()).transpose();  // o_t = scale S_t^T q_t
  }
}

struct HeadGrads { Mat dq, dk, dg, db, dv, dw, ds0; };

// Token-by-token backward of spec section 6, in double.
HeadGrads backward_head(const gdr2::Head<double>& h, const Mat& dout, const Mat& dht, const std::string& bug) {
  const Index T = h.T(), K = h.dk(), V = h.dv();
  std::vector<Mat> prev(static_cast<size_t>(T)), after(static_cast<size_t>(T));
  Mat S = h.s0;
  for (Index t = 0; t < T; ++t) {
    prev[static_cast<size_t>(t)] = S;
    const Vec alpha = h.g.row(t).transpose().array().exp().matrix();
    const Vec e = h.b.row(t).transpose().cwiseProduct(h.k.row(t).transpose());
    const Vec z = h.w.row(t).transpose().cwiseProduct(h.v.row(t).transpose());
    S = alpha.asDiagonal() * S;
    const Vec r = S.transpose() * e;
    S += h.k.row(t).transpose() * (z - r).transpose();
    after[static_cast<size_t>(t)] = S;
  }
  HeadGrads g{Mat::Zero(T, K), Mat::Zero(T, K), Mat::Zero(T, K), Mat::Zero(T, K), Mat::Zero(T, V), Mat::Zero(T, V), Mat()};
  Mat dS = dht;
  for (Index t = T - 1; t >= 0; --t) {
    const Vec q = h.q.row(t).transpose(), k = h.k.row(t).transpose(), b = h.b.row(t).transpose();
    const Vec v = h.v.row(t).transpose(), w = h.w.row(t).transpose(), dot = dout.row(t).transpose();
    const Vec alpha = h.g.row(t).transpose().array().exp().matrix();
    const Mat& Sprev = prev[static_cast<size_t>(t)];
    const Mat Sbar = alpha.asDiagonal() * Sprev;
    const Vec e = b.cwiseProduct(k), z = w.cwiseProduct(v), r = Sbar.transpose() * e;
    dS += h.scale * q * dot.transpose();                      // dS_t += scale q_t do_t^T
    g.dq.row(t) = (h.scale * after[static_cast<size_t>(t)] * dot).transpose();  // dq_t = scale S_t do_t
    const Vec delta = z - r;
    Vec dk = dS * delta;                                      // dk_t += dS_t delta
    const Vec ddelta = dS.transpose() * k, dz = ddelta, dr = -ddelta;
    const Mat dSbar = dS + e * dr.transpose();                // dSbar = dS_t + e_t dr^T
    const Vec de = Sbar * dr;
    Vec dw = dz.cwiseProduct(v), db = de.cwiseProduct(k);
    if (bug == "scalar-postscale") {  // the KDA rule: one scalar per token, spread evenly: wrong for channel gates
      dw = Vec::Constant(V, dw.mean());
      db = Vec::Constant(K, db.mean());
    }
    g.dw.row(t) = dw.transpose();
    g.dv.row(t) = dz.cwiseProduct(w).transpose();
    g.db.row(t) = db.transpose();
    dk += de.cwiseProduct(b);
    g.dk.row(t) = dk.transpose();
    g.dg.row(t) = alpha.cwiseProduct(dSbar.cwiseProduct(Sprev).rowwise().sum()).transpose();  // dg_t
    dS = alpha.asDiagonal() * dSbar;                          // dS_{t-1} = D_t dSbar
  }
  g.ds0 = bug == "drop-dh0" ? Mat(Mat::Zero(dS.rows(), dS.cols())) : dS;  // dS_0 = the gradient reaching S_0
  return g;
}

void misbehave_now(const Settings& s, const std::string& out_path, std::string& answer) {
  if (s.misbehave == "crash") std::abort();
  if (s.misbehave == "hang")
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  if (s.misbehave == "garbage") answer = "hello, I am not a protocol answer";
  if (s.misbehave == "error") answer = "error this port does not support the case";
  (void)out_path;
}

std::string process(const Settings& s, const std::string& in_path, const std::string& out_path, bool misbehave) {
  const gdr2v::SafeTensors in = gdr2v::SafeTensors::load(in_path);
  const gdr2v::DType io = in.at("q").dtype;
  if (in.meta("state_layout", "KV") != "KV") throw std::runtime_error("this port writes states as KV only");
  const gdr2v::Case c = gdr2v::case_from_file(in);
  const auto& x = c.x;
  const Index N = c.N();
  gdr2v::Outputs out;
  out.o.assign(x.v.size(), 0.0);
  out.ht.assign(static_cast<size_t>(N * x.HV * x.K * x.V), 0.0);
  if (c.want_grad) {
    out.has_grad = true;
    for (auto* t : {&out.dq, &out.dk, &out.dg, &out.db}) t->assign(x.q.size(), 0.0);
    for (auto* t : {&out.dv, &out.dw}) t->assign(x.v.size(), 0.0);
    out.dh0.assign(out.ht.size(), 0.0);
  }
  for (Index n = 0; n < N; ++n)
    for (Index hv = 0; hv < x.HV; ++hv) {
      const gdr2::Head<double> head = gdr2::extract_head(x, n, hv);
      MatF o, state;
      forward_head(head, s.bug, o, state);
      const Index begin = x.seq_begin(n), kh = x.key_head(hv);
      const size_t state_at = static_cast<size_t>((n * x.HV + hv) * x.K * x.V);
      for (Index t = 0; t < head.T(); ++t)
        for (Index d = 0; d < x.V; ++d) out.o[static_cast<size_t>(((begin + t) * x.HV + hv) * x.V + d)] = o(t, d);
      for (Index i = 0; i < x.K; ++i)
        for (Index j = 0; j < x.V; ++j) out.ht[state_at + static_cast<size_t>(i * x.V + j)] = state(i, j);
      if (!c.want_grad) continue;
      Mat dout(head.T(), x.V), dht(x.K, x.V);
      for (Index t = 0; t < head.T(); ++t)
        for (Index d = 0; d < x.V; ++d) dout(t, d) = c.dout[static_cast<size_t>(((begin + t) * x.HV + hv) * x.V + d)];
      for (Index i = 0; i < x.K; ++i)
        for (Index j = 0; j < x.V; ++j) dht(i, j) = c.dht[state_at + static_cast<size_t>(i * x.V + j)];
      const HeadGrads g = backward_head(head, dout, dht, s.bug);
      for (Index t = 0; t < head.T(); ++t) {
        const size_t key_at = static_cast<size_t>(((begin + t) * x.H + kh) * x.K);  // shared q, k, g, b: summed over the group
        const size_t value_at = static_cast<size_t>(((begin + t) * x.HV + hv) * x.V);
        for (Index d = 0; d < x.K; ++d) {
          out.dq[key_at + d] += g.dq(t, d); out.dk[key_at + d] += g.dk(t, d);
          out.dg[key_at + d] += g.dg(t, d); out.db[key_at + d] += g.db(t, d);
        }
        for (Index d = 0; d < x.V; ++d) { out.dv[value_at + d] = g.dv(t, d); out.dw[value_at + d] = g.dw(t, d); }
      }
      for (Index i = 0; i < x.K; ++i)
        for (Index j = 0; j < x.V; ++j) out.dh0[state_at + static_cast<size_t>(i * x.V + j)] = g.ds0(i, j);
    }
  gdr2v::SafeTensors f;
  for (const auto& t : gdr2v::output_tensors(c, out)) {
    const bool fp32 = t.name == "ht" || t.name == "dh0" || t.name == "dg";  // states and decay gradients in fp32
    auto shape = t.shape;
    if (misbehave && s.misbehave == "wrong-shape" && t.name == "o") shape[1] += 1;
    if (misbehave && s.misbehave == "missing-tensor" && t.name == "ht") continue;
    std::vector<double> values = *t.values;
    if (misbehave && s.misbehave == "wrong-shape" && t.name == "o") values.resize(values.size() + static_cast<size_t>(x.B * x.HV * x.V));
    f.tensors[t.name] = gdr2v::Tensor::from_double(fp32 ? gdr2v::DType::f32 : io, shape, values);
  }
  f.save(out_path);
  return "ok";
}

}  // namespace

int main(int argc, char** argv) {
  Settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) { std::fprintf(stderr, "gdr2-example-port: %s needs a value\n", a.c_str()); std::exit(2); }
      return argv[++i];
    };
    if (a == "--bug") s.bug = value();
    else if (a == "--misbehave") s.misbehave = value();
    else if (a == "--after") s.after = std::atoi(value().c_str());
    else if (a == "--dtypes") s.dtypes = value();
    else if (a == "--no-grad") s.grad = false;
    else { std::fprintf(stderr, "gdr2-example-port: unknown argument %s\n", a.c_str()); return 2; }
  }
  if (s.misbehave == "bad-handshake") { std::printf("hello from a port that forgot the protocol\n"); std::fflush(stdout); }
  else if (s.misbehave == "hang-handshake") { for (;;) std::this_thread::sleep_for(std::chrono::seconds(1)); }
  else {
    // The handshake: protocol version, then capabilities.
    std::printf("gdr2-port 1 dtypes=%s grad=%d varlen=1 gva=1 max_dk=256 max_dv=256 state=KV\n", s.dtypes.c_str(),
                s.grad ? 1 : 0);
    std::fflush(stdout);
  }
  int served = 0;
  for (std::string line; std::getline(std::cin, line);) {
    std::istringstream words(line);
    std::string in_path, out_path, answer;
    if (!(words >> in_path >> out_path)) { std::printf("error expected '<input path> <output path>'\n"); std::fflush(stdout); continue; }
    const bool misbehave = s.misbehave != "none" && served >= s.after;
    ++served;
    try {
      if (misbehave) misbehave_now(s, out_path, answer);
      if (answer.empty()) answer = process(s, in_path, out_path, misbehave);
    } catch (const std::exception& e) {
      answer = std::string("error ") + e.what();
      for (char& ch : answer) if (ch == '\n') ch = ' ';
    }
    std::printf("%s\n", answer.c_str());
    std::fflush(stdout);
  }
  return 0;
}
