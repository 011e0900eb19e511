#pragma once
// Batched API on the ecosystem's layout (spec section 1):
//   q, k, g, b  [B, T, H, K]      v, w, o  [B, T, HV, V]      h0, ht  [N, HV, K, V]
// all row-major (last index fastest). Grouped value heads: HV is a multiple of H and value head hv
// reads key head hv / (HV / H) (the HV / H value heads of a group share q, k, g, b). Packed
// variable-length batches: B = 1 and cu_seqlens = {0, T_1, T_1 + T_2, ..., T}; each of the N
// sequences starts from its own h0 slice. Without cu_seqlens, N = B sequences of length T.
// Each (sequence, value head) is run through the per-head reference, so batched == per-head exactly.
#include <cstdint>
#include <vector>
#include "gdr2/chunkwise.hpp"
#include "gdr2/recurrent.hpp"

namespace gdr2 {

template <class Scalar>
struct Batch {
  Index B = 1, T = 0, H = 1, HV = 1, K = 1, V = 1;
  std::vector<Scalar> q, k, g, b;   // [B, T, H, K]
  std::vector<Scalar> v, w;         // [B, T, HV, V]
  std::vector<Scalar> h0;           // [N, HV, K, V], or empty for zero initial states
  std::vector<std::int64_t> cu_seqlens;  // empty, or N + 1 offsets (then B must be 1)
  Scalar scale = Scalar(1);

  Index num_sequences() const { return cu_seqlens.empty() ? B : static_cast<Index>(cu_seqlens.size()) - 1; }
  // Token range [begin, end) of sequence n within the flattened B*T token axis.
  Index seq_begin(Index n) const { return cu_seqlens.empty() ? n * T : static_cast<Index>(cu_seqlens[n]); }
  Index seq_end(Index n) const { return cu_seqlens.empty() ? (n + 1) * T : static_cast<Index>(cu_seqlens[n + 1]); }
  Index key_head(Index hv) const { return hv / (HV / H); }  // GVA: the key head a value head reads

  // Zero-filled batch (g = 0, scale = 1/sqrt(K)) of B sequences of length T.
  static Batch zeros(Index B, Index T, Index H, Index HV, Index K, Index V, bool with_h0) {
    Batch x;
    x.B = B; x.T = T; x.H = H; x.HV = HV; x.K = K; x.V = V;
    const auto nk = static_cast<size_t>(B * T * H * K), nv = static_cast<size_t>(B * T * HV * V);
    x.q.assign(nk, Scalar(0)); x.k = x.q; x.g = x.q; x.b = x.q;
    x.v.assign(nv, Scalar(0)); x.w = x.v;
    if (with_h0) x.h0.assign(static_cast<size_t>(B * HV * K * V), Scalar(0));
    using std::sqrt;
    x.scale = Scalar(1) / sqrt(from_double<Scalar>(static_cast<double>(K)));
    return x;
  }
};

template <class Scalar>
struct BatchedForward {
  std::vector<Scalar> o;   // [B, T, HV, V]
  std::vector<Scalar> ht;  // [N, HV, K, V]
};

namespace detail {

template <class Scalar>
void check_tensor(const char* who, const char* name, const std::vector<Scalar>& x, size_t expected,
                  const char* layout, const Index* dims, int rank) {
  if (x.size() != expected) {
    std::ostringstream s;
    s << layout << " = [";
    for (int i = 0; i < rank; ++i) s << (i ? ", " : "") << dims[i];
    s << "]";
    fail(who, ": tensor '", name, "' has ", x.size(), " elements, expected ", expected, " (", s.str(), ")");
  }
  for (size_t i = 0; i < x.size(); ++i) {
    if (is_finite(x[i])) continue;
    std::ostringstream at;
    size_t rest = i;
    std::vector<size_t> index(static_cast<size_t>(rank));
    for (int d = rank - 1; d >= 0; --d) {
      index[static_cast<size_t>(d)] = rest % static_cast<size_t>(dims[d]);
      rest /= static_cast<size_t>(dims[d]);
    }
    for (int d = 0; d < rank; ++d) at << (d ? ", " : "") << index[static_cast<size_t>(d)];
    fail(who, ": tensor '", name, "' has a non-finite value ", to_text(x[i]), " at [", at.str(), "] of ", layout);
  }
}

}  // namespace detail

template <class Scalar>
void validate(const Batch<Scalar>& x, const char* who) {
  detail::check_positive(who, "B", x.B);
  detail::check_positive(who, "H", x.H);
  detail::check_positive(who, "HV", x.HV);
  detail::check_positive(who, "K", x.K);
  detail::check_positive(who, "V", x.V);
  if (x.T < 0) detail::fail(who, ": T must be >= 0, got ", x.T);
  if (x.HV % x.H != 0)
    detail::fail(who, ": HV (value heads) must be a multiple of H (key heads), got HV = ", x.HV, ", H = ", x.H);
  if (!x.cu_seqlens.empty()) {
    if (x.B != 1) detail::fail(who, ": cu_seqlens given, so B must be 1, got B = ", x.B);
    if (x.cu_seqlens.size() < 2)
      detail::fail(who, ": cu_seqlens must hold N + 1 >= 2 offsets, got ", x.cu_seqlens.size());
    if (x.cu_seqlens.front() != 0) detail::fail(who, ": cu_seqlens[0] must be 0, got ", x.cu_seqlens.front());
    for (size_t i = 1; i < x.cu_seqlens.size(); ++i)
      if (x.cu_seqlens[i] < x.cu_seqlens[i - 1])
        detail::fail(who, ": cu_seqlens must be non-decreasing, but cu_seqlens[", i, "] = ", x.cu_seqlens[i],
                     " < cu_seqlens[", i - 1, "] = ", x.cu_seqlens[i - 1]);
    if (x.cu_seqlens.back() != x.T)
      detail::fail(who, ": cu_seqlens must end at T = ", x.T, ", got ", x.cu_seqlens.back());
  }
  const Index N = x.num_sequences();
  const Index key_dims[4] = {x.B, x.T, x.H, x.K}, value_dims[4] = {x.B, x.T, x.HV, x.V},
              state_dims[4] = {N, x.HV, x.K, x.V};
  const auto nk = static_cast<size_t>(x.B * x.T * x.H * x.K), nv = static_cast<size_t>(x.B * x.T * x.HV * x.V);
  detail::check_tensor(who, "q", x.q, nk, "[B, T, H, K]", key_dims, 4);
  detail::check_tensor(who, "k", x.k, nk, "[B, T, H, K]", key_dims, 4);
  detail::check_tensor(who, "g", x.g, nk, "[B, T, H, K]", key_dims, 4);
  detail::check_tensor(who, "b", x.b, nk, "[B, T, H, K]", key_dims, 4);
  detail::check_tensor(who, "v", x.v, nv, "[B, T, HV, V]", value_dims, 4);
  detail::check_tensor(who, "w", x.w, nv, "[B, T, HV, V]", value_dims, 4);
  if (!x.h0.empty())
    detail::check_tensor(who, "h0", x.h0, static_cast<size_t>(N * x.HV * x.K * x.V), "[N, HV, K, V]", state_dims, 4);
  detail::check_finite_scalar(who, "scale", x.scale);
}

// The per-head problem of sequence n and value head hv (copies out of the batched layout).
template <class Scalar>
Head<Scalar> extract_head(const Batch<Scalar>& x, Index n, Index hv) {
  const Index begin = x.seq_begin(n), len = x.seq_end(n) - begin, h = x.key_head(hv);
  Head<Scalar> head;
  head.q.resize(len, x.K); head.k.resize(len, x.K); head.g.resize(len, x.K); head.b.resize(len, x.K);
  head.v.resize(len, x.V); head.w.resize(len, x.V);
  for (Index t = 0; t < len; ++t) {
    const size_t key_at = static_cast<size_t>(((begin + t) * x.H + h) * x.K);
    const size_t value_at = static_cast<size_t>(((begin + t) * x.HV + hv) * x.V);
    for (Index d = 0; d < x.K; ++d) {
      head.q(t, d) = x.q[key_at + d]; head.k(t, d) = x.k[key_at + d];
      head.g(t, d) = x.g[key_at + d]; head.b(t, d) = x.b[key_at + d];
    }
    for (Index d = 0; d < x.V; ++d) { head.v(t, d) = x.v[value_at + d]; head.w(t, d) = x.w[value_at + d]; }
  }
  head.s0 = Matrix<Scalar>::Zero(x.K, x.V);
  if (!x.h0.empty()) {
    const size_t state_at = static_cast<size_t>((n * x.HV + hv) * x.K * x.V);
    for (Index i = 0; i < x.K; ++i)
      for (Index j = 0; j < x.V; ++j) head.s0(i, j) = x.h0[state_at + static_cast<size_t>(i * x.V + j)];
  }
  head.scale = x.scale;
  return head;
}

enum class Form { recurrent, chunkwise };

// Runs every (sequence, value head) through the chosen per-head form; OpenMP over the pairs.
template <class Scalar>
BatchedForward<Scalar> batched_forward(const Batch<Scalar>& x, Form form = Form::recurrent, Index chunk_size = 64) {
  validate(x, "batched_forward");
  if (form == Form::chunkwise) detail::check_positive("batched_forward", "chunk_size", chunk_size);
  const Index N = x.num_sequences();
  BatchedForward<Scalar> out;
  out.o.assign(static_cast<size_t>(x.B * x.T * x.HV * x.V), Scalar(0));
  out.ht.assign(static_cast<size_t>(N * x.HV * x.K * x.V), Scalar(0));
  const long long pairs = static_cast<long long>(N * x.HV);
#pragma omp parallel for schedule(dynamic, 1)
  for (long long p = 0; p < pairs; ++p) {
    const Index n = static_cast<Index>(p) / x.HV, hv = static_cast<Index>(p) % x.HV;
    const Head<Scalar> head = extract_head(x, n, hv);
    const Forward<Scalar> f = form == Form::recurrent ? recurrent_forward(head) : chunkwise_forward(head, chunk_size);
    const Index begin = x.seq_begin(n);
    for (Index t = 0; t < head.T(); ++t)
      for (Index d = 0; d < x.V; ++d) out.o[static_cast<size_t>(((begin + t) * x.HV + hv) * x.V + d)] = f.o(t, d);
    const size_t state_at = static_cast<size_t>((n * x.HV + hv) * x.K * x.V);
    for (Index i = 0; i < x.K; ++i)
      for (Index j = 0; j < x.V; ++j) out.ht[state_at + static_cast<size_t>(i * x.V + j)] = f.s(i, j);
  }
  return out;
}

}  // namespace gdr2
