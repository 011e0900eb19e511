// Placeholder translation unit: device discovery. The kernels arrive with the CUDA issue.
#include <cuda_runtime.h>
#include "gdr2/cuda.hpp"

namespace gdr2::cuda {

bool device_available() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

std::string device_name() {
  cudaDeviceProp prop{};
  if (!device_available() || cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return "no CUDA device";
  return prop.name;
}

}  // namespace gdr2::cuda
