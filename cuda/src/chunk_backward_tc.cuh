// The tensor-core chunk backward (Mode::fast, chunk_backward_tc.cu), called by chunk_backward.
#pragma once

#include "common.cuh"

namespace gdr2::cuda::detail {

// bf16 / f16 inputs with 16 <= K <= 128 and V <= 128, on a device with 227 KB of shared memory per block (sm_90);
// otherwise Mode::fast runs the fp32 backward.
bool tensor_core_backward_eligible(const Problem& p);

// The backward on tensor cores (chunk_backward_tc.cu): phase A (the forward's prepare kernel, with A), the
// sequential phases B and C (chunk-start states S_c with R, chunk-end state gradients dS_c with dR; dh0 written by
// C) and the gradient phase D. With dq, dk, db = nullptr (allowed when HV == H) every gradient is stored
// directly in x. Otherwise they are fp32 accumulators [B*T, H, K] that, like x.dg, the caller zeroes before and
// converts after (the value heads of a group add into them). dv, dw are written in the input dtype. p and x are
// validated, T > 0.
// With `saved` (a forward's SavedForward, saved_forward.cuh) phases A and B are skipped: their outputs are read there.
struct SavedParts;
void tensor_core_backward(const Problem& p, const BackwardTensors& x, int N, float scale, float* dq, float* dk,
                          float* db, const SavedParts* saved, cudaStream_t stream, const char* who);

}  // namespace gdr2::cuda::detail
