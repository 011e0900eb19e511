#pragma once
// RapidCheck generators for the tests' random problems (they shrink towards T = 0, d = 1, typical gates).
#include <ostream>
#include <rapidcheck.h>
#include "problems.hpp"

namespace gdr2_test {

struct ProblemSpec {
  std::uint64_t seed = 0;
  Index T = 0, dk = 1, dv = 1;
  Gates regime = Gates::typical;
  bool with_s0 = true;
  gdr2::Head<double> head() const { return random_head(seed, T, dk, dv, regime, with_s0); }
};

inline std::ostream& operator<<(std::ostream& os, const ProblemSpec& p) {
  return os << "{seed=" << p.seed << ", T=" << p.T << ", d_k=" << p.dk << ", d_v=" << p.dv
            << ", gates=" << name(p.regime) << ", s0=" << (p.with_s0 ? "random" : "zero") << "}";
}

// T in [0, max_T], d_k and d_v in [1, max_d] drawn independently (so usually unequal), every gate regime.
// work_budget caps T * d_k * d_v (T is reduced to fit) so multiprecision cases stay affordable.
inline rc::Gen<ProblemSpec> gen_problem(Index max_T, Index max_d, Index work_budget) {
  return rc::gen::apply(
      [=](std::uint64_t seed, int T, int dk, int dv, int regime, bool with_s0) {
        ProblemSpec p;
        p.seed = seed;
        p.dk = dk;
        p.dv = dv;
        p.T = std::min<Index>(T, std::max<Index>(1, work_budget / (p.dk * p.dv)));
        p.regime = kAllGates[regime];
        p.with_s0 = with_s0;
        return p;
      },
      rc::gen::arbitrary<std::uint64_t>(), rc::gen::inRange<int>(0, static_cast<int>(max_T) + 1),
      rc::gen::inRange<int>(1, static_cast<int>(max_d) + 1), rc::gen::inRange<int>(1, static_cast<int>(max_d) + 1),
      rc::gen::inRange<int>(0, static_cast<int>(std::size(kAllGates))), rc::gen::arbitrary<bool>());
}

}  // namespace gdr2_test
