# The router's canary split through its control endpoint, with replicas of two versions of a
# model: the share of unversioned requests each version gets, fallback when the drawn side
# has no replica, versioned requests unaffected, bad control requests.
if(CORRAL_PYTHON)
  add_test(NAME integration_router_canary
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_canary.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
  set_tests_properties(integration_router_canary PROPERTIES TIMEOUT 300
                       LABELS "integration;router" SKIP_RETURN_CODE 77)
endif()
