# The router's whole HTTP surface (OIP endpoints, datatypes, binary data,
# classification, statistics, predict, error statuses, failover), and the same
# driven by tritonclient.http.
if(CORRAL_PYTHON)
  foreach(t protocol tritonclient)
    add_test(NAME integration_${t}
             COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_${t}.py
                     ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
    set_tests_properties(integration_${t} PROPERTIES TIMEOUT 180 LABELS "integration;router")
  endforeach()
endif()
