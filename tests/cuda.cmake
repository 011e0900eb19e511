# CUDA forward tests (cuda-fwd). GPU tests are named Cuda* and skip ("skipped: no CUDA device") without a
# GPU; the CudaApi tests (host-side validation) run everywhere.
if(GDR2_HAVE_CUDA)
  # RC_CASES: each random case launches one kernel and runs the double and float references (~10 ms).
  gdr2_add_test(test_cuda_forward test_cuda_forward.cpp RC_CASES 40)
  target_link_libraries(test_cuda_forward PRIVATE gdr2::cuda CUDA::cudart GTest::gmock)
endif()
