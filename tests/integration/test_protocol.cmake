# The router's whole HTTP surface (OIP endpoints, datatypes, binary data,
# classification, statistics, predict, error statuses), the same driven by
# tritonclient.http (skipped, exit 77, if it cannot be imported), Triton's model
# configuration and repository index with replicas in every state
# (test_model_config.py), Triton's perf_analyzer at batch 1 and 4 with JSON and binary
# tensors (fetched by bench/perf_analyzer.sh --fetch; skipped, exit 77, where it cannot
# be had), and a replica SIGKILLed under concurrent HTTP and RPC load (test_failover.py).
if(CORRAL_PYTHON)
  foreach(t protocol tritonclient model_config perf_analyzer failover)
    add_test(NAME integration_${t}
             COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_${t}.py
                     ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
    set_tests_properties(integration_${t} PROPERTIES TIMEOUT 180 LABELS "integration;router"
                         SKIP_RETURN_CODE 77)
  endforeach()
endif()
