// SavedForward (gdr2/cuda.hpp): the device buffer a forward fills with the tensor-core backward's phases A and B,
// its layout, and the checks that a backward repeats the forward that filled it.
#include <string>
#include <utility>

#include "chunk_backward_tc.cuh"
#include "chunk_forward_tc.cuh"
#include "saved_forward.cuh"

namespace gdr2::cuda {

SavedForward::~SavedForward() {
  if (data_ != nullptr) cudaFree(data_);  // no throw from a destructor; a failure here leaves the memory
}

SavedForward::SavedForward(SavedForward&& other) noexcept { *this = std::move(other); }

SavedForward& SavedForward::operator=(SavedForward&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) cudaFree(data_);
    data_ = std::exchange(other.data_, nullptr);
    capacity_ = std::exchange(other.capacity_, 0);
    filled_ = std::exchange(other.filled_, false);
    problem_ = other.problem_;
    mode_ = other.mode_;
    for (int i = 0; i < 7; ++i) inputs_[i] = other.inputs_[i];
  }
  return *this;
}

void SavedForward::release() {
  if (data_ != nullptr) detail::check(cudaFree(data_), "gdr2::cuda::SavedForward::release", "cudaFree");
  data_ = nullptr;
  capacity_ = 0;
  filled_ = false;
}

namespace detail {
namespace {

struct PartCounts {  // elements of each part
  std::size_t sq, key, val, state, gam;
};

PartCounts part_counts(const Problem& p, int N) {
  const std::size_t tokens = static_cast<std::size_t>(p.B) * p.T;
  const std::size_t KP = tc::round_up(p.K, 16), VP = tc::round_up(p.V, 16);
  const std::size_t slots = static_cast<std::size_t>(tc::slot_count(p, N));
  return {tokens * p.H * tc::kC, tokens * p.H * KP, tokens * p.HV * VP, slots * p.HV * KP * VP, slots * p.H * KP};
}

const char* mode_name(Mode m) { return m == Mode::fast ? "Mode::fast" : "Mode::accurate"; }

}  // namespace

std::size_t saved_parts_bytes(const Problem& p, int N) {
  const PartCounts c = part_counts(p, N);
  return (2 * c.sq + 3 * c.key + 2 * c.val + c.state) * sizeof(tc::bf16) + c.gam * sizeof(float);
}

SavedParts saved_parts(const Problem& p, int N, void* base) {
  const PartCounts c = part_counts(p, N);
  SavedParts s;
  s.pw.aqk = static_cast<tc::bf16*>(base);
  s.pw.a = s.pw.aqk + c.sq;
  s.pw.y = s.pw.a + c.sq;
  s.pw.qg = s.pw.y + c.key;
  s.pw.ktail = s.pw.qg + c.key;
  s.pw.u = s.pw.ktail + c.key;
  s.r = s.pw.u + c.val;
  s.states = s.r + c.val;
  s.pw.gamma_c = reinterpret_cast<float*>(s.states + c.state);
  return s;
}

bool saved_forward_applies(const Problem& p, Mode mode) {
  return mode == Mode::fast && tensor_core_forward_eligible(p) && tensor_core_backward_eligible(p);
}

SavedParts SavedForwardAccess::begin_fill(SavedForward& s, const Problem& p, int N, const ForwardTensors& x,
                                          Mode mode, const char* who) {
  s.filled_ = false;
  const std::size_t bytes = saved_parts_bytes(p, N);
  if (s.capacity_ < bytes) {
    if (s.data_ != nullptr) check(cudaFree(s.data_), who, "cudaFree(SavedForward buffer)");
    s.data_ = nullptr;
    s.capacity_ = 0;
    check(cudaMalloc(&s.data_, bytes), who, "cudaMalloc(SavedForward buffer)");
    s.capacity_ = bytes;
  }
  s.problem_ = p;
  s.mode_ = mode;
  const void* inputs[7] = {x.q, x.k, x.v, x.g, x.b, x.w, x.h0};
  for (int i = 0; i < 7; ++i) s.inputs_[i] = inputs[i];
  return saved_parts(p, N, s.data_);
}

const SavedParts* SavedForwardAccess::parts_for_backward(const SavedForward& s, const Problem& p, int N,
                                                          const BackwardTensors& x, Mode mode, SavedParts& parts,
                                                          const char* who) {
  if (!s.filled_) return nullptr;
  const Problem& f = s.problem_;
  auto differs = [&](const char* what, auto forward, auto backward) {
    if (forward != backward)
      fail(who, ": the SavedForward was filled by a forward with ", what, " = ", forward, ", this backward has ", what,
           " = ", backward, " (a SavedForward serves the backward of the same call)");
  };
  differs("B", f.B, p.B);
  differs("T", f.T, p.T);
  differs("H", f.H, p.H);
  differs("HV", f.HV, p.HV);
  differs("K", f.K, p.K);
  differs("V", f.V, p.V);
  differs("dtype", std::string(dtype_name(f.dtype)), std::string(dtype_name(p.dtype)));
  differs("scale", f.scale, p.scale);
  differs("cu_seqlens", static_cast<const void*>(f.cu_seqlens), static_cast<const void*>(p.cu_seqlens));
  differs("num_seqs", f.num_seqs, p.num_seqs);
  differs("mode", std::string(mode_name(s.mode_)), std::string(mode_name(mode)));
  const void* inputs[7] = {x.q, x.k, x.v, x.g, x.b, x.w, x.h0};
  const char* names[7] = {"tensor 'q' at", "tensor 'k' at", "tensor 'v' at", "tensor 'g' at", "tensor 'b' at",
                          "tensor 'w' at", "tensor 'h0' at"};
  for (int i = 0; i < 7; ++i) differs(names[i], s.inputs_[i], inputs[i]);
  parts = saved_parts(p, N, s.data_);
  return &parts;
}

}  // namespace detail
}  // namespace gdr2::cuda
