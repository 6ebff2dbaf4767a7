# Model parity through the real replica and router: the zoo's vision models, MLP and
# transformer (bench/models/zoo.py) exported with deploy/export/export.py and served
# on loopback, logits compared with PyTorch at batch 1 and 8. CPU here; cuda:0 in an
# entry of its own, skipped (exit 77, with the reason) where no device exists. Needs
# the tooling virtualenv's python (CORRAL_PYTHON) with torchvision.
if(NOT CORRAL_PYTHON)
  message(STATUS "CORRAL_PYTHON is empty: skipping the model parity tests")
  return()
endif()
if(NOT TARGET corral-replica OR NOT TARGET corral-router)
  message(STATUS "corral-replica or corral-router is not part of this build: skipping the model parity tests")
  return()
endif()

add_test(NAME integration_model_parity
         COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_model_parity.py --build ${CMAKE_BINARY_DIR})
add_test(NAME integration_model_parity_cuda
         COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_model_parity.py --build ${CMAKE_BINARY_DIR}
                 --device cuda:0)
set_tests_properties(integration_model_parity PROPERTIES
                     LABELS "integration;python;parity" TIMEOUT 600 SKIP_RETURN_CODE 77)
set_tests_properties(integration_model_parity_cuda PROPERTIES
                     LABELS "integration;python;parity;cuda" TIMEOUT 600 SKIP_RETURN_CODE 77)
