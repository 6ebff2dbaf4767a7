# The replica's --device cuda:N contract: one clear line and a non-zero exit
# without a device (devices hidden with CUDA_VISIBLE_DEVICES="", so this runs
# on any machine, and in builds without the CUDA backend, which must refuse
# cuda:N the same way); and, as an entry of its own that is skipped without a
# GPU, the digits model verifying on cuda:0.
if(CORRAL_PYTHON)
  add_test(NAME integration_cuda_device
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_cuda_device.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
  add_test(NAME integration_cuda_device_gpu
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_cuda_device.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR} --gpu)
  set_tests_properties(integration_cuda_device integration_cuda_device_gpu PROPERTIES
                       TIMEOUT 300 LABELS "integration;cuda" SKIP_RETURN_CODE 77)
endif()
