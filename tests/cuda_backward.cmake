# CUDA chunkwise backward tests (cuda-bwd). ChunkBackwardOracle / ChunkBackwardEmulation / CudaBackwardApi run
# on the CPU; CudaBackward* need a GPU and report "skipped: no CUDA device" without one.
if(GDR2_HAVE_CUDA)
  gdr2_add_test(test_cuda_backward test_cuda_backward.cpp)
  target_link_libraries(test_cuda_backward PRIVATE gdr2::cuda CUDA::cudart)
endif()
