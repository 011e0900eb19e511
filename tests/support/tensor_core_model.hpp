// Host model of the CUDA tensor-core chunk forward (cuda/src/chunk_forward_tc.cu): the chunkwise WY
// algorithm of spec section 5 in float, rounded to bfloat16 at every point where the kernel stores or feeds
// a tensor-core operand in bf16. Its error against the double reference is "the error of the same
// algorithm in the same precision" that calibrates the kernel's tolerance (cuda_testbed.hpp).
//
// Rounded to bf16, as in the kernel: Aqk (scale folded in) and T (the kernel rounds T's operands, the
// prescaled rows; rounding T itself is the same relative size, 2^-9), A, Ebar, Z = W * V, Y = A Ebar,
// U = A Z, Qgamma (scale folded in), Ktail, the state as a product operand, R = U - Y S. Float (fp32, as in
// the kernel): G, gamma_C, the forward substitution, every accumulation, the state S itself.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <vector>

#include <gdr2/batched.hpp>

namespace gdr2_test::cuda {

struct ModelForward {
  std::vector<double> o, ht;  // [B*T, HV, V], [N, HV, K, V]
};

inline float round_bf16(float x) { return static_cast<float>(Eigen::bfloat16(x)); }

inline ModelForward tensor_core_model(const gdr2::Batch<double>& x) {
  using M = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const auto K = x.K, V = x.V, H = x.H, HV = x.HV;
  const auto N = x.num_sequences();
  const float scale = static_cast<float>(x.scale);
  auto bf = [](M m) { return M(m.unaryExpr([](float e) { return round_bf16(e); })); };
  ModelForward out;
  out.o.assign(x.v.size(), 0.0);
  out.ht.assign(static_cast<std::size_t>(N * HV * K * V), 0.0);
  for (gdr2::Index n = 0; n < N; ++n)
    for (gdr2::Index hv = 0; hv < HV; ++hv) {
      const auto h = x.key_head(hv);
      M S = M::Zero(K, V);
      if (!x.h0.empty())
        for (gdr2::Index d = 0; d < K; ++d)
          for (gdr2::Index c = 0; c < V; ++c) S(d, c) = static_cast<float>(x.h0[((n * HV + hv) * K + d) * V + c]);
      for (auto t0 = x.seq_begin(n); t0 < x.seq_end(n); t0 += 64) {
        const auto len = std::min<gdr2::Index>(64, x.seq_end(n) - t0);
        M q(len, K), k(len, K), G(len, K), e(len, K), z(len, V);
        for (gdr2::Index r = 0; r < len; ++r) {
          for (gdr2::Index d = 0; d < K; ++d) {
            const auto at = ((t0 + r) * H + h) * K + d;
            q(r, d) = static_cast<float>(x.q[at]);
            k(r, d) = static_cast<float>(x.k[at]);
            e(r, d) = static_cast<float>(x.b[at]) * k(r, d);
            G(r, d) = static_cast<float>(x.g[at]) + (r > 0 ? G(r - 1, d) : 0.0f);  // Eq. 18, fp32 cumsum
          }
          for (gdr2::Index c = 0; c < V; ++c) {
            const auto at = ((t0 + r) * HV + hv) * V + c;
            z(r, c) = static_cast<float>(x.w[at]) * static_cast<float>(x.v[at]);
          }
        }
        M Aqk = M::Zero(len, len), T = M::Zero(len, len);
        for (gdr2::Index r = 0; r < len; ++r)
          for (gdr2::Index s = 0; s <= r; ++s) {
            float a = 0, t = 0;
            for (gdr2::Index d = 0; d < K; ++d) {
              const float decayed_key = k(s, d) * std::exp(G(r, d) - G(s, d));  // r >= s: never overflows
              a += q(r, d) * decayed_key;
              t += e(r, d) * decayed_key;
            }
            Aqk(r, s) = scale * a;
            if (s < r) T(r, s) = t;
          }
        Aqk = bf(Aqk);
        T = bf(T);
        M A = M::Identity(len, len);  // Eq. 20, forward substitution in fp32
        for (gdr2::Index r = 1; r < len; ++r)
          for (gdr2::Index c = 0; c < r; ++c) {
            float sum = 0;
            for (gdr2::Index s = c; s < r; ++s) sum += T(r, s) * A(s, c);
            A(r, c) = -sum;
          }
        A = bf(A);
        M Ebar(len, K), Qg(len, K), Ktail(len, K);
        Eigen::VectorXf gamma_c(K);
        for (gdr2::Index d = 0; d < K; ++d) {
          gamma_c(d) = std::exp(G(len - 1, d));
          for (gdr2::Index r = 0; r < len; ++r) {
            const float gamma = std::exp(G(r, d));
            Ebar(r, d) = gamma * e(r, d);
            Qg(r, d) = scale * gamma * q(r, d);
            Ktail(r, d) = k(r, d) * std::exp(G(len - 1, d) - G(r, d));
          }
        }
        const M Y = bf(A * bf(Ebar)), U = bf(A * bf(z));  // Eq. 21-22
        Qg = bf(Qg);
        Ktail = bf(Ktail);
        const M Sb = bf(S);
        const M R = bf(U - Y * Sb);       // Eq. 23
        const M O = Qg * Sb + Aqk * R;    // Eq. 24
        S = gamma_c.asDiagonal() * S + Ktail.transpose() * R;  // Eq. 25
        for (gdr2::Index r = 0; r < len; ++r)
          for (gdr2::Index c = 0; c < V; ++c) out.o[((t0 + r) * HV + hv) * V + c] = O(r, c);
      }
      for (gdr2::Index d = 0; d < K; ++d)
        for (gdr2::Index c = 0; c < V; ++c) out.ht[((n * HV + hv) * K + d) * V + c] = S(d, c);
    }
  return out;
}

}  // namespace gdr2_test::cuda
