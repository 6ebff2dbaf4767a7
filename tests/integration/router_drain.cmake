# The router's drain on SIGTERM through real processes: requests in flight answered,
# idle connections closed, new ones refused, exit 0; and the drain deadline.
if(CORRAL_PYTHON)
  add_test(NAME integration_router_drain
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_router_drain.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
  set_tests_properties(integration_router_drain PROPERTIES TIMEOUT 180
                       LABELS "integration;router" SKIP_RETURN_CODE 77)
endif()
