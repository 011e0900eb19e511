#pragma once
// Raw tensor-core products for the tensor-core kernels: mma.sync.m16n8k16 (bf16 operands, fp32 accumulation) with
// operands loaded from shared memory by ldmatrix. Unlike WMMA, whose fragment layouts are left to the
// implementation, these layouts are fixed by the PTX ISA ("Matrix fragments for mma.m16n8k16 with floating point
// type" and "ldmatrix"), so a kernel can address accumulator elements directly. One ldmatrix.x4 replaces the
// generic loads and transposing moves that WMMA's load_matrix_sync compiles to. Internal header; sm_80+.
//
// Lane l: g = l / 4 (group), q = l % 4 (thread in group). Layouts of a 16 x 16 tile:
//   Frag16 as an A operand (rows m, columns k):   r[0] (g, 2q..2q+1)  r[1] (g+8, 2q..)  r[2] (g, 8+2q..)  r[3] (g+8, 8+2q..)
//   Frag16 as a B operand (rows k, columns n):    n half h in r[2h] (k 2q..2q+1, n 8h+g), r[2h+1] (k 8+2q.., n 8h+g)
//   Acc16 (rows m, columns n), n half h:          c[h][0..1] (g, 8h+2q..2q+1)  c[h][2..3] (g+8, 8h+2q..2q+1)
#include <cuda_bf16.h>

namespace gdr2::cuda::detail::tc {

struct Frag16 {  // 16 x 16 bf16 operand, two bf16 per register
  unsigned r[4];
};

struct Acc16 {  // 16 x 16 fp32 accumulator, as two 16 x 8 halves
  float c[2][4];
  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int i = 0; i < 4; ++i) c[h][i] = 0.0f;
  }
  // Row (0..15) and column (0..15) of element c[h][i] for this lane.
  __device__ static __forceinline__ int row(int lane, int i) { return (lane >> 2) + 8 * (i >> 1); }
  __device__ static __forceinline__ int col(int lane, int h, int i) { return 8 * h + 2 * (lane & 3) + (i & 1); }
  // Offset, in a tile of row stride ld, of the pair c[h][2 p], c[h][2 p + 1] (two adjacent columns).
  __device__ static __forceinline__ int pair_offset(int lane, int ld, int h, int p) {
    return row(lane, 2 * p) * ld + col(lane, h, 0);
  }
  // From / to an fp32 16 x 16 tile of row stride ld (even; tile 8-byte aligned).
  __device__ __forceinline__ void load(const float* tile, int ld, int lane) {
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int p = 0; p < 2; ++p) {
        const float2 x = *reinterpret_cast<const float2*>(tile + pair_offset(lane, ld, h, p));
        c[h][2 * p] = x.x;
        c[h][2 * p + 1] = x.y;
      }
  }
  __device__ __forceinline__ void store(float* tile, int ld, int lane) const {
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int p = 0; p < 2; ++p)
        *reinterpret_cast<float2*>(tile + pair_offset(lane, ld, h, p)) = make_float2(c[h][2 * p], c[h][2 * p + 1]);
  }
  // To a bf16 16 x 16 tile of row stride ld (even; tile 4-byte aligned), each element rounded once.
  __device__ __forceinline__ void store_bf16(__nv_bfloat16* tile, int ld, int lane) const {
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int p = 0; p < 2; ++p)
        *reinterpret_cast<__nv_bfloat162*>(tile + pair_offset(lane, ld, h, p)) =
            __floats2bfloat162_rn(c[h][2 * p], c[h][2 * p + 1]);
  }
  // Multiplies row r (0..15) by factor[r].
  __device__ __forceinline__ void scale_rows(const float* factor, int lane) {
    const float lo = factor[row(lane, 0)], hi = factor[row(lane, 2)];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      c[h][0] *= lo;
      c[h][1] *= lo;
      c[h][2] *= hi;
      c[h][3] *= hi;
    }
  }
  __device__ __forceinline__ void negate() {
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int i = 0; i < 4; ++i) c[h][i] = -c[h][i];
  }
};

namespace detail_ldmatrix {
__device__ __forceinline__ unsigned shared_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void x4(Frag16& f, const __nv_bfloat16* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(f.r[0]), "=r"(f.r[1]), "=r"(f.r[2]), "=r"(f.r[3])
               : "r"(shared_address(row))
               : "memory");
}
__device__ __forceinline__ void x4_trans(Frag16& f, const __nv_bfloat16* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(f.r[0]), "=r"(f.r[1]), "=r"(f.r[2]), "=r"(f.r[3])
               : "r"(shared_address(row))
               : "memory");
}
}  // namespace detail_ldmatrix

// Each row address must be 16-byte aligned (ld a multiple of 8 elements, p 16-byte aligned); shared memory only.

// A operand, stored row-major: element (m, k) at p[m * ld + k].
__device__ __forceinline__ void load_a(Frag16& a, const __nv_bfloat16* p, int ld, int lane) {
  detail_ldmatrix::x4(a, p + (lane & 15) * ld + (lane >> 4) * 8);
}

// A operand given by its transpose X, stored row-major: element (m, k) of A at p[k * ld + m].
__device__ __forceinline__ void load_a_transposed(Frag16& a, const __nv_bfloat16* p, int ld, int lane) {
  detail_ldmatrix::x4_trans(a, p + ((lane >> 4) * 8 + (lane & 7)) * ld + ((lane >> 3) & 1) * 8);
}

// B operand, stored row-major: element (k, n) at p[k * ld + n].
__device__ __forceinline__ void load_b(Frag16& b, const __nv_bfloat16* p, int ld, int lane) {
  detail_ldmatrix::x4_trans(b, p + (lane & 15) * ld + (lane >> 4) * 8);
}

// B operand given by its transpose, stored row-major: element (k, n) of B at p[n * ld + k].
__device__ __forceinline__ void load_b_transposed(Frag16& b, const __nv_bfloat16* p, int ld, int lane) {
  detail_ldmatrix::x4(b, p + ((lane >> 4) * 8 + (lane & 7)) * ld + ((lane >> 3) & 1) * 8);
}

// d += a b (16 x 16 x 16): two mma.sync.m16n8k16, one per n half.
__device__ __forceinline__ void mma(Acc16& d, const Frag16& a, const Frag16& b) {
#pragma unroll
  for (int h = 0; h < 2; ++h)
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d.c[h][0]), "+f"(d.c[h][1]), "+f"(d.c[h][2]), "+f"(d.c[h][3])
        : "r"(a.r[0]), "r"(a.r[1]), "r"(a.r[2]), "r"(a.r[3]), "r"(b.r[2 * h]), "r"(b.r[2 * h + 1]));
}

// acc += sum over kb < k_blocks of a_kb b_kb, the operands loaded by LoadA from A + kb a_step and by LoadB from
// B + kb b_step. Unrolled when k_blocks is a compile-time constant at the (inlined) call.
using OperandLoader = void (*)(Frag16&, const __nv_bfloat16*, int, int);
template <OperandLoader LoadA, OperandLoader LoadB>
__device__ __forceinline__ void mma_k_blocks(Acc16& acc, const __nv_bfloat16* A, int lda, int a_step,
                                             const __nv_bfloat16* B, int ldb, int b_step, int k_blocks, int lane) {
#pragma unroll
  for (int kb = 0; kb < k_blocks; ++kb) {
    Frag16 a, b;
    LoadA(a, A + kb * a_step, lda, lane);
    LoadB(b, B + kb * b_step, ldb, lane);
    mma(acc, a, b);
  }
}

// The three forms the kernels use; every pointer is at its first k block, every matrix row-major.
// acc += A B over k_blocks: A has 16 rows, B 16 columns.
__device__ __forceinline__ void mma_ab(Acc16& acc, const __nv_bfloat16* A, int lda, const __nv_bfloat16* B, int ldb,
                                       int k_blocks, int lane) {
  mma_k_blocks<load_a, load_b>(acc, A, lda, 16, B, ldb, 16 * ldb, k_blocks, lane);
}
// acc += A Bt^T: A has 16 rows, Bt 16 rows (the output's columns).
__device__ __forceinline__ void mma_abt(Acc16& acc, const __nv_bfloat16* A, int lda, const __nv_bfloat16* Bt, int ldb,
                                        int k_blocks, int lane) {
  mma_k_blocks<load_a, load_b_transposed>(acc, A, lda, 16, Bt, ldb, 16, k_blocks, lane);
}
// acc += At^T B: At has 16 columns (the output's rows), B 16 columns.
__device__ __forceinline__ void mma_atb(Acc16& acc, const __nv_bfloat16* At, int lda, const __nv_bfloat16* B, int ldb,
                                        int k_blocks, int lane) {
  mma_k_blocks<load_a_transposed, load_b>(acc, At, lda, 16 * lda, B, ldb, 16 * ldb, k_blocks, lane);
}

}  // namespace gdr2::cuda::detail::tc
