#pragma once
// What a SavedForward (gdr2/cuda.hpp) holds on the tensor-core path: the outputs of the tensor-core backward's
// phases A and B, written by the forward that computes them anyway, so that the backward starts at phase C.
// Internal header.
#include <cstddef>

#include "tensor_core_common.cuh"

namespace gdr2::cuda::detail {

struct SavedParts {
  tc::PrepareWorkspace pw;     // phase A: Aqk, A, Y, Qgamma, Ktail, U (bf16) and gamma_C (fp32), with pw.a set
  tc::bf16* states = nullptr;  // phase B: the chunk-start states S_c [slots, HV, KP, VP], bf16
  tc::bf16* r = nullptr;       // phase B: R = U - Y S_c [BT, HV, VP], bf16
};

// Bytes of the parts of a call with N sequences (every part a multiple of 16 bytes), and their addresses in a
// buffer of that size starting at `base` (16-byte aligned).
std::size_t saved_parts_bytes(const Problem& p, int N);
SavedParts saved_parts(const Problem& p, int N, void* base);

// The tensor-core forward and backward both run for this problem in Mode::fast (then a SavedForward is filled).
bool saved_forward_applies(const Problem& p, Mode mode);

// The library's access to a SavedForward's private members.
struct SavedForwardAccess {
  // Before a forward that fills `s`: grows its buffer to the problem's size (cudaMalloc, synchronous), records
  // the problem, the mode and the input pointers, and returns the parts; `s` counts as filled after mark_filled.
  static SavedParts begin_fill(SavedForward& s, const Problem& p, int N, const ForwardTensors& x, Mode mode,
                               const char* who);
  static void mark_filled(SavedForward& s) { s.filled_ = true; }
  static void clear(SavedForward& s) { s.filled_ = false; }
  // For a backward: nullptr when `s` is not filled; otherwise checks that the call repeats the forward's problem,
  // mode and input pointers (an error naming the first difference) and returns its parts in `parts`.
  static const SavedParts* parts_for_backward(const SavedForward& s, const Problem& p, int N, const BackwardTensors& x,
                                              Mode mode, SavedParts& parts, const char* who);
};

}  // namespace gdr2::cuda::detail
