// Uses the installed gdr2::reference: one token by hand, both forms. Exit 0 when they agree.
#include <cstdio>
#include <gdr2/reference.hpp>
int main() {
  auto h = gdr2::Head<double>::zeros(3, 2, 2);
  h.q.setConstant(0.5); h.k.setConstant(0.7); h.b.setConstant(0.5); h.w.setConstant(1.0);
  h.v << 1, 2, 3, 4, 5, 6;
  h.g.setConstant(-0.1);
  const auto a = gdr2::recurrent_forward(h), b = gdr2::chunkwise_forward(h, 2);
  const double diff = (a.o - b.o).norm();
  std::printf("consumer: |recurrent - chunkwise| = %.3e\n", diff);
  return diff < 1e-12 ? 0 : 1;
}
