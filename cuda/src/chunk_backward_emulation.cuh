#pragma once
// Host emulation of the CUDA chunkwise backward (plain C++ declaration; usable from g++-compiled tests).
// Runs the kernel's block program (chunk_backward_program.cuh) serially on the CPU: same fp32 formulas,
// same per-element summation order. For testing the backward's mathematics without a GPU.
#include <cstdint>

#include "gdr2/cuda.hpp"

namespace gdr2::cuda::detail {

// dtype must be f32; every pointer in x is a HOST pointer (same layout as chunk_backward); cu_seqlens is a
// host pointer or nullptr (p.cu_seqlens is ignored; p.num_seqs gives N when cu_seqlens is given).
void chunk_backward_host_emulation(const Problem& p, const BackwardTensors& x, const std::int32_t* cu_seqlens);

}  // namespace gdr2::cuda::detail
