# The router's whole HTTP surface (OIP endpoints, datatypes, binary data,
# classification, statistics, predict, error statuses), the same driven by
# tritonclient.http (skipped, exit 77, if it cannot be imported), and a replica
# SIGKILLed under concurrent HTTP and RPC load (test_failover.py).
if(CORRAL_PYTHON)
  foreach(t protocol tritonclient failover)
    add_test(NAME integration_${t}
             COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_${t}.py
                     ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
    set_tests_properties(integration_${t} PROPERTIES TIMEOUT 180 LABELS "integration;router"
                         SKIP_RETURN_CODE 77)
  endforeach()
endif()
