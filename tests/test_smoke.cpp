#include <gtest/gtest.h>
#include <gdr2/reference.hpp>
TEST(Smoke, ZeroLengthReturnsInitialState) {
  auto h = gdr2::Head<double>::zeros(0, 3, 2);
  h.s0.setConstant(1.5);
  const auto f = gdr2::recurrent_forward(h);
  EXPECT_EQ(f.o.rows(), 0);
  EXPECT_EQ(f.s, h.s0);
}
