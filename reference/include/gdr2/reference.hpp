#pragma once
// gdr2: reference implementation of the Gated Delta Rule-2 (Gated DeltaNet-2's recurrent operator).
//   gdr2::Head<Scalar>                         one head, one sequence (gdr2/head.hpp)
//   gdr2::recurrent_forward(head)              token by token, Eq. 8-10 (gdr2/recurrent.hpp)
//   gdr2::chunkwise_forward(head, C)           chunkwise WY form, Eq. 18-25 (gdr2/chunkwise.hpp)
//   gdr2::batched_forward(batch, form)         ecosystem layout, GVA, varlen, OpenMP (gdr2/batched.hpp)
//   gdr2::kda_forward, gated_deltanet_forward, deltanet_forward, gla_forward, as_gdr2  (gdr2/family.hpp)
// Scalars: float, double, long double, Eigen::half, Eigen::bfloat16, Boost.Multiprecision numbers
// (include <boost/multiprecision/eigen.hpp> too), Eigen::AutoDiffScalar (include gdr2/autodiff.hpp).
#include "gdr2/scalar.hpp"
#include "gdr2/errors.hpp"
#include "gdr2/head.hpp"
#include "gdr2/recurrent.hpp"
#include "gdr2/chunkwise.hpp"
#include "gdr2/batched.hpp"
#include "gdr2/family.hpp"
