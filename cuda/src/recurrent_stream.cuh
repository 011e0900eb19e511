#pragma once
// The streaming recurrent kernel (recurrent_stream.cu): per-(sequence, value head) states streamed through
// shared memory in slices of 64 columns by a persistent grid, for decode-shaped calls. Internal header.
#include <cstddef>

#include "common.cuh"

namespace gdr2::cuda::detail {

// Empty when the streaming kernel can run this call on the current device, else why not (for the error
// of a forced GDR2_CUDA_RECURRENT_KERNEL=stream): K <= 256, V % 4 == 0, h0 and ht 16-byte aligned, and
// kStages state slices of K x 64 floats fitting in one block's shared memory.
std::string recurrent_stream_unsupported(const Problem& p, const ForwardTensors& x);

// Launches it (p and x validated by the caller; N sequences, effective scale).
void launch_recurrent_stream(const Problem& p, const ForwardTensors& x, int N, float scale, cudaStream_t stream);

}  // namespace gdr2::cuda::detail
