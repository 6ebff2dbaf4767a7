# The replica's --device cuda:N contract: one clear line and a non-zero exit
# without a device; the digits model verifies on cuda:0 with one. Registered in
# every build (a build without the CUDA backend must refuse cuda:N the same way).
if(CORRAL_PYTHON)
  add_test(NAME integration_cuda_device
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_cuda_device.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
  set_tests_properties(integration_cuda_device PROPERTIES TIMEOUT 300
                       LABELS "integration;cuda")
endif()
