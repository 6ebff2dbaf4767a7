# The CUDA backend's unit test (only in builds with the CUDA backend). Without
# a CUDA device it checks the clean failure of backend creation, prints
# "skipped: no CUDA device" and exits 77, which ctest reports as skipped.
# It links the CUDA module (libcorral_cuda.so) directly, so it calls
# backend_cuda_create itself and backend_create("cuda:N") finds it linked in.
if(CORRAL_HAVE_CUDA_BACKEND)
  add_executable(test_backend_cuda ${CMAKE_CURRENT_LIST_DIR}/test_backend_cuda.c)
  target_link_libraries(test_backend_cuda PRIVATE corral_engine corral_cuda CUDA::cudart
                        PkgConfig::CMOCKA ${M_LIB})
  add_test(NAME unit_backend_cuda COMMAND test_backend_cuda)
  set_tests_properties(unit_backend_cuda PROPERTIES SKIP_RETURN_CODE 77
                       LABELS "unit;engine;cuda" TIMEOUT 300)
endif()
