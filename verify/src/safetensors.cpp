#include "safetensors.hpp"

#include <Eigen/Core>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

namespace gdr2v {

const char* safetensors_name(DType t) {
  switch (t) {
    case DType::f64: return "F64";
    case DType::f32: return "F32";
    case DType::bf16: return "BF16";
    case DType::f16: return "F16";
    case DType::i64: return "I64";
    case DType::i32: return "I32";
  }
  return "?";
}

const char* short_name(DType t) {
  switch (t) {
    case DType::f64: return "f64";
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::i64: return "i64";
    case DType::i32: return "i32";
  }
  return "?";
}

DType dtype_from_safetensors(const std::string& name) {
  for (DType t : {DType::f64, DType::f32, DType::bf16, DType::f16, DType::i64, DType::i32})
    if (name == safetensors_name(t)) return t;
  throw format_error("unsupported safetensors dtype '" + name + "' (supported: F64, F32, BF16, F16, I64, I32)");
}

size_t dtype_size(DType t) {
  switch (t) {
    case DType::f64: case DType::i64: return 8;
    case DType::f32: case DType::i32: return 4;
    case DType::bf16: case DType::f16: return 2;
  }
  return 0;
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

std::int64_t Tensor::numel() const {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

double round_to(DType t, double x) {
  switch (t) {
    case DType::f32: return static_cast<double>(static_cast<float>(x));
    case DType::bf16: return static_cast<double>(static_cast<float>(Eigen::bfloat16(static_cast<float>(x))));
    case DType::f16: return static_cast<double>(static_cast<float>(Eigen::half(static_cast<float>(x))));
    default: return x;
  }
}

// Note on rounding: double -> float -> bf16/f16 is a double rounding, but every value gdr2-verify rounds to
// bf16/f16 is first rounded to fp32 by design (kernels receive fp32-or-narrower data), so it is what a
// framework's .to(bfloat16) of an fp32 tensor gives.

std::vector<double> Tensor::to_double() const {
  const auto n = static_cast<size_t>(numel());
  if (bytes.size() != n * dtype_size(dtype)) throw format_error("tensor byte size does not match shape");
  std::vector<double> out(n);
  const std::uint8_t* p = bytes.data();
  for (size_t i = 0; i < n; ++i) {
    switch (dtype) {
      case DType::f64: { double v; std::memcpy(&v, p + 8 * i, 8); out[i] = v; break; }
      case DType::f32: { float v; std::memcpy(&v, p + 4 * i, 4); out[i] = v; break; }
      case DType::i64: { std::int64_t v; std::memcpy(&v, p + 8 * i, 8); out[i] = static_cast<double>(v); break; }
      case DType::i32: { std::int32_t v; std::memcpy(&v, p + 4 * i, 4); out[i] = v; break; }
      case DType::bf16: {
        std::uint16_t bits; std::memcpy(&bits, p + 2 * i, 2);
        out[i] = static_cast<float>(Eigen::numext::bit_cast<Eigen::bfloat16>(bits)); break;
      }
      case DType::f16: {
        std::uint16_t bits; std::memcpy(&bits, p + 2 * i, 2);
        out[i] = static_cast<float>(Eigen::numext::bit_cast<Eigen::half>(bits)); break;
      }
    }
  }
  return out;
}

Tensor Tensor::from_double(DType dtype, std::vector<std::int64_t> shape, const std::vector<double>& values) {
  Tensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  if (static_cast<std::int64_t>(values.size()) != t.numel())
    throw std::logic_error("Tensor::from_double: " + std::to_string(values.size()) + " values for shape " +
                           shape_text(t.shape));
  t.bytes.resize(values.size() * dtype_size(dtype));
  std::uint8_t* p = t.bytes.data();
  for (size_t i = 0; i < values.size(); ++i) {
    const double x = values[i];
    switch (dtype) {
      case DType::f64: std::memcpy(p + 8 * i, &x, 8); break;
      case DType::f32: { const float v = static_cast<float>(x); std::memcpy(p + 4 * i, &v, 4); break; }
      case DType::i64: { const auto v = static_cast<std::int64_t>(x); std::memcpy(p + 8 * i, &v, 8); break; }
      case DType::i32: { const auto v = static_cast<std::int32_t>(x); std::memcpy(p + 4 * i, &v, 4); break; }
      case DType::bf16: {
        const auto bits = Eigen::numext::bit_cast<std::uint16_t>(Eigen::bfloat16(static_cast<float>(x)));
        std::memcpy(p + 2 * i, &bits, 2); break;
      }
      case DType::f16: {
        const auto bits = Eigen::numext::bit_cast<std::uint16_t>(Eigen::half(static_cast<float>(x)));
        std::memcpy(p + 2 * i, &bits, 2); break;
      }
    }
  }
  return t;
}

const Tensor& SafeTensors::at(const std::string& name) const {
  auto it = tensors.find(name);
  if (it != tensors.end()) return it->second;
  std::string have;
  for (const auto& [n, t] : tensors) have += (have.empty() ? "" : ", ") + n;
  throw format_error("missing tensor '" + name + "' (the file has: " + (have.empty() ? "none" : have) + ")");
}

std::string SafeTensors::meta(const std::string& key, const std::string& fallback) const {
  auto it = metadata.find(key);
  return it == metadata.end() ? fallback : it->second;
}

void SafeTensors::save(const std::string& path) const {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  size_t offset = 0;
  for (const auto& [name, t] : tensors) {
    header[name] = {{"dtype", safetensors_name(t.dtype)}, {"shape", t.shape},
                    {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text = header.dump();
  while (text.size() % 8 != 0) text += ' ';  // the format allows trailing spaces; keeps data 8-aligned
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw std::runtime_error("cannot write '" + path + "'");
  std::uint64_t n = text.size();
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  out.write(reinterpret_cast<const char*>(len), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const auto& [name, t] : tensors)
    out.write(reinterpret_cast<const char*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size()));
  if (!out) throw std::runtime_error("write to '" + path + "' failed");
}

SafeTensors SafeTensors::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw format_error("cannot open '" + path + "'");
  std::vector<char> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (data.size() < 8) throw format_error("'" + path + "' is " + std::to_string(data.size()) + " bytes, too short");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(data[static_cast<size_t>(i)]);
  if (n > data.size() - 8) throw format_error("'" + path + "': header length " + std::to_string(n) + " exceeds file");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(data.begin() + 8, data.begin() + 8 + static_cast<std::ptrdiff_t>(n));
  } catch (const std::exception& e) {
    throw format_error("'" + path + "': header is not JSON: " + e.what());
  }
  if (!header.is_object()) throw format_error("'" + path + "': header is not a JSON object");
  SafeTensors st;
  const size_t base = 8 + n;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      for (auto m = it.value().begin(); m != it.value().end(); ++m)
        st.metadata[m.key()] = m.value().is_string() ? m.value().get<std::string>() : m.value().dump();
      continue;
    }
    try {
      Tensor t;
      t.dtype = dtype_from_safetensors(it.value().at("dtype").get<std::string>());
      t.shape = it.value().at("shape").get<std::vector<std::int64_t>>();
      for (auto d : t.shape)
        if (d < 0) throw format_error("negative dimension");
      const auto offsets = it.value().at("data_offsets").get<std::vector<std::uint64_t>>();
      if (offsets.size() != 2 || offsets[1] < offsets[0] || base + offsets[1] > data.size())
        throw format_error("data_offsets out of the file");
      if (offsets[1] - offsets[0] != static_cast<std::uint64_t>(t.numel()) * dtype_size(t.dtype))
        throw format_error("data_offsets span " + std::to_string(offsets[1] - offsets[0]) + " bytes, shape " +
                           shape_text(t.shape) + " of " + safetensors_name(t.dtype) + " needs " +
                           std::to_string(t.numel() * static_cast<std::int64_t>(dtype_size(t.dtype))));
      t.bytes.assign(data.begin() + static_cast<std::ptrdiff_t>(base + offsets[0]),
                     data.begin() + static_cast<std::ptrdiff_t>(base + offsets[1]));
      st.tensors[it.key()] = std::move(t);
    } catch (const format_error& e) {
      throw format_error("'" + path + "': tensor '" + it.key() + "': " + e.what());
    } catch (const nlohmann::json::exception& e) {
      throw format_error("'" + path + "': tensor '" + it.key() + "': malformed entry: " + e.what());
    }
  }
  return st;
}

}  // namespace gdr2v
