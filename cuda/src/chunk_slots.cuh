#pragma once
// Chunk slots: the numbering of the 64-token chunks of a call that every chunk kernel shares (the workspaces
// and the backward's state stores are indexed by it). Slots go sequence by sequence: slot = chunks of the
// sequences before n + chunk index. Dense layout: N * ceil(T / 64) slots. Packed (cu_seqlens): ceil(T / 64) + N
// slots are launched (an upper bound of sum_n ceil(len_n / 64)) and the extra ones get len = 0. Internal header.
#include <cstdint>

namespace gdr2::cuda::detail {

constexpr int kSlotTokens = 64;  // the chunk length C

struct Slot {
  int n;            // sequence
  std::int64_t t0;  // first token (flattened B*T axis)
  int len;          // tokens in the chunk, 1..64; 0 = no chunk for this slot
};

// Slot -> (sequence, chunk).
__device__ inline Slot find_slot(const std::int32_t* cu_seqlens, int N, int T, int slot) {
  if (cu_seqlens == nullptr) {
    const int per_seq = (T + kSlotTokens - 1) / kSlotTokens;
    const int n = slot / per_seq, c = slot % per_seq;
    if (n >= N) return {0, 0, 0};
    return {n, static_cast<std::int64_t>(n) * T + static_cast<std::int64_t>(c) * kSlotTokens,
            min(kSlotTokens, T - c * kSlotTokens)};
  }
  int first = 0;
  for (int n = 0; n < N; ++n) {
    const int bos = cu_seqlens[n], eos = cu_seqlens[n + 1];
    const int chunks = (eos - bos + kSlotTokens - 1) / kSlotTokens;
    if (slot < first + chunks) {
      const int c = slot - first;
      return {n, bos + static_cast<std::int64_t>(c) * kSlotTokens, min(kSlotTokens, eos - bos - c * kSlotTokens)};
    }
    first += chunks;
  }
  return {0, 0, 0};
}

// The first slot of sequence n (the slots of the sequences before it).
__device__ inline std::int64_t first_slot(const std::int32_t* cu_seqlens, int n, int T) {
  if (cu_seqlens == nullptr) return static_cast<std::int64_t>(n) * ((T + kSlotTokens - 1) / kSlotTokens);
  std::int64_t base = 0;
  for (int m = 0; m < n; ++m) base += (cu_seqlens[m + 1] - cu_seqlens[m] + kSlotTokens - 1) / kSlotTokens;
  return base;
}

// Tokens of the chunk starting at t0 in a sequence ending at eos.
__device__ __forceinline__ int chunk_length(std::int64_t t0, std::int64_t eos) {
  return eos - t0 < kSlotTokens ? static_cast<int>(eos - t0) : kSlotTokens;
}

}  // namespace gdr2::cuda::detail
