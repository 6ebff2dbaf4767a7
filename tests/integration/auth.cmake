# Bearer tokens on the router's inference endpoints, HTTP and RPC (corralctl --token-file).
if(CORRAL_PYTHON)
  add_test(NAME integration_auth
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_auth.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
  set_tests_properties(integration_auth PROPERTIES TIMEOUT 180 LABELS "integration;router;python")
endif()
