// The tensor-core chunk forward (Mode::fast, chunk_forward_tc.cu), called by chunk_forward.
#pragma once

#include "common.cuh"

namespace gdr2::cuda::detail {

// bf16 / f16 inputs with K <= 128; otherwise Mode::fast runs the fp32 kernels.
bool tensor_core_forward_eligible(const Problem& p);

struct SavedParts;

// Runs the forward on tensor cores; `p` and `x` are validated and T > 0. state_vt (16, 32 or 64) is the
// value-column tile of the sequential state kernel. With `save` (saved_forward.cuh) the intermediates go there,
// with A, the chunk-start states and R (the state tile then at most 32 columns); otherwise to a workspace.
void chunk_forward_tensor_core(const Problem& p, const ForwardTensors& x, const Validated& checked, int state_vt,
                               const SavedParts* save, cudaStream_t stream, const char* who);

}  // namespace gdr2::cuda::detail
