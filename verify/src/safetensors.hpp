#pragma once
// Minimal safetensors reader/writer (https://huggingface.co/docs/safetensors): an 8-byte little-endian
// header length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}, then
// the raw little-endian tensor bytes. gdr2-verify uses it for the port protocol and for repro files.
// Supported dtypes: F64, F32, BF16, F16 (stored as their bit patterns) and I64, I32 (offsets).
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace gdr2v {

enum class DType { f64, f32, bf16, f16, i64, i32 };
const char* safetensors_name(DType t);   // "F64", "F32", "BF16", ...
const char* short_name(DType t);         // "f64", "f32", "bf16", ...
DType dtype_from_safetensors(const std::string& name);  // throws format_error
size_t dtype_size(DType t);

class format_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Tensor {
  DType dtype = DType::f32;
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> bytes;

  std::int64_t numel() const;
  // Values as doubles (exact for every supported floating dtype).
  std::vector<double> to_double() const;
  // Rounds each value to `dtype` (round to nearest even), the single rounding a kernel's input sees.
  static Tensor from_double(DType dtype, std::vector<std::int64_t> shape, const std::vector<double>& values);
};

std::string shape_text(const std::vector<std::int64_t>& shape);  // "[2, 3]"

struct SafeTensors {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;

  bool has(const std::string& name) const { return tensors.count(name) != 0; }
  // The tensor, or format_error naming it and the file's tensors.
  const Tensor& at(const std::string& name) const;
  std::string meta(const std::string& key, const std::string& fallback = "") const;

  void save(const std::string& path) const;           // throws std::runtime_error on I/O failure
  static SafeTensors load(const std::string& path);   // throws format_error naming the problem
};

// Rounds a double to the nearest value of a floating dtype (f64: unchanged).
double round_to(DType t, double x);

}  // namespace gdr2v
