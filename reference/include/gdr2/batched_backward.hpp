#pragma once
// Batched backward on the ecosystem layout (gdr2/batched.hpp): per (sequence, value head) through the
// per-head backward; gradients of the shared q, k, g, b of a group of value heads are summed over the group
// (in value-head order). OpenMP over (sequence, key head), so no two threads write the same element.
#include "gdr2/batched.hpp"
#include "gdr2/chunkwise_backward.hpp"
#include "gdr2/recurrent_backward.hpp"

namespace gdr2 {

template <class Scalar>
struct BatchedGradients {
  std::vector<Scalar> dq, dk, dg, db;  // [B, T, H, K]
  std::vector<Scalar> dv, dw;          // [B, T, HV, V]
  std::vector<Scalar> dh0;             // [N, HV, K, V]
};

template <class Scalar>
BatchedGradients<Scalar> batched_backward(const Batch<Scalar>& x, const std::vector<Scalar>& dout,
                                          const std::vector<Scalar>& dht, Form form = Form::recurrent,
                                          Index chunk_size = 64) {
  const char* who = "batched_backward";
  validate(x, who);
  if (form == Form::chunkwise) detail::check_positive(who, "chunk_size", chunk_size);
  const Index N = x.num_sequences();
  const Index value_dims[4] = {x.B, x.T, x.HV, x.V}, state_dims[4] = {N, x.HV, x.K, x.V};
  detail::check_tensor(who, "dout", dout, static_cast<size_t>(x.B * x.T * x.HV * x.V), "[B, T, HV, V]", value_dims, 4);
  if (!dht.empty())
    detail::check_tensor(who, "dht", dht, static_cast<size_t>(N * x.HV * x.K * x.V), "[N, HV, K, V]", state_dims, 4);
  BatchedGradients<Scalar> out;
  const auto nk = static_cast<size_t>(x.B * x.T * x.H * x.K), nv = static_cast<size_t>(x.B * x.T * x.HV * x.V);
  out.dq.assign(nk, Scalar(0)); out.dk = out.dq; out.dg = out.dq; out.db = out.dq;
  out.dv.assign(nv, Scalar(0)); out.dw = out.dv;
  out.dh0.assign(static_cast<size_t>(N * x.HV * x.K * x.V), Scalar(0));
  const Index group = x.HV / x.H;
  const long long pairs = static_cast<long long>(N * x.H);
#pragma omp parallel for schedule(dynamic, 1)
  for (long long p = 0; p < pairs; ++p) {
    const Index n = static_cast<Index>(p) / x.H, h = static_cast<Index>(p) % x.H;
    const Index begin = x.seq_begin(n);
    for (Index hv = h * group; hv < (h + 1) * group; ++hv) {
      const Head<Scalar> head = extract_head(x, n, hv);
      const Index len = head.T();
      Matrix<Scalar> d_o(len, x.V), d_s = Matrix<Scalar>::Zero(x.K, x.V);
      for (Index t = 0; t < len; ++t)
        for (Index d = 0; d < x.V; ++d) d_o(t, d) = dout[static_cast<size_t>(((begin + t) * x.HV + hv) * x.V + d)];
      const size_t state_at = static_cast<size_t>((n * x.HV + hv) * x.K * x.V);
      if (!dht.empty())
        for (Index i = 0; i < x.K; ++i)
          for (Index j = 0; j < x.V; ++j) d_s(i, j) = dht[state_at + static_cast<size_t>(i * x.V + j)];
      const Gradients<Scalar> g = form == Form::recurrent ? recurrent_backward(head, d_o, d_s)
                                                          : chunkwise_backward(head, d_o, d_s, chunk_size);
      for (Index t = 0; t < len; ++t) {
        const size_t key_at = static_cast<size_t>(((begin + t) * x.H + h) * x.K);
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
  }
  return out;
}

}  // namespace gdr2
