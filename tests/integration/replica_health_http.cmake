# The replica's HTTP probes and metrics (--health-listen): /live, /ready and /metrics
# through starting, ready, a stuck executor and a drain, with real processes.
if(CORRAL_PYTHON)
  add_test(NAME integration_replica_health_http
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_replica_health_http.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
  set_tests_properties(integration_replica_health_http PROPERTIES TIMEOUT 300
                       LABELS "integration;replica" SKIP_RETURN_CODE 77)
endif()
