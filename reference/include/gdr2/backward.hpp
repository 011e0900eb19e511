#pragma once
// gdr2 backward: the vector-Jacobian products of the reference forward, and the tools to check gradients.
//   gdr2::recurrent_backward(head, dout, ds_final)        token by token (gdr2/recurrent_backward.hpp)
//   gdr2::chunkwise_backward(head, dout, ds_final, C)     gate-aware chunkwise VJPs (gdr2/chunkwise_backward.hpp)
//   gdr2::batched_backward(batch, dout, dht, form)        ecosystem layout, GVA sums, varlen (gdr2/batched_backward.hpp)
//   gdr2::kda_backward, gated_deltanet_backward, ...      family gradients by Eq. 48 (gdr2/family_gradients.hpp)
//   gdr2::apply_gates, gates_backward                     the layer's gate activations (gdr2/gate_parameterisation.hpp)
//   gdr2::gradcheck, compare_gradients                    finite differences in multiprecision (gdr2/gradcheck.hpp)
#include "gdr2/reference.hpp"
#include "gdr2/gradients.hpp"
#include "gdr2/recurrent_backward.hpp"
#include "gdr2/chunkwise_backward.hpp"
#include "gdr2/batched_backward.hpp"
#include "gdr2/family_gradients.hpp"
#include "gdr2/gate_parameterisation.hpp"
#include "gdr2/gradcheck.hpp"
