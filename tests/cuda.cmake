# CUDA forward tests (cuda-fwd). GPU tests are named Cuda* and skip ("skipped: no CUDA device") without a
# GPU; the CudaApi tests (host-side validation) run everywhere.
if(GDR2_HAVE_CUDA)
  # RC_CASES: each random case launches one kernel and runs the double and float references (~10 ms).
  gdr2_add_test(test_cuda_forward test_cuda_forward.cpp RC_CASES 40)
  target_link_libraries(test_cuda_forward PRIVATE gdr2::cuda CUDA::cudart GTest::gmock)
  # The tensor-core products (cuda/src/mma_sync.cuh) one warp at a time: a probe kernel in its own small library,
  # so that only it is compiled by nvcc.
  add_library(gdr2_test_mma_probe STATIC support/mma_probe.cu)
  target_include_directories(gdr2_test_mma_probe PRIVATE ${PROJECT_SOURCE_DIR}/cuda/src)
  target_link_libraries(gdr2_test_mma_probe PUBLIC CUDA::cudart)
  gdr2_add_test(test_cuda_mma test_cuda_mma.cpp)
  target_link_libraries(test_cuda_mma PRIVATE gdr2_test_mma_probe gdr2::cuda)
endif()
