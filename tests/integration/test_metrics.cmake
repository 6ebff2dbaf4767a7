# GET /metrics: exact counts after a known workload, and the text validated by
# promtool (Debian package prometheus) in an entry of its own, skipped without it.
find_program(CORRAL_PROMTOOL promtool)
if(CORRAL_PYTHON)
  add_test(NAME integration_metrics
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_metrics.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
  add_test(NAME integration_metrics_promtool
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_metrics.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR} --promtool "${CORRAL_PROMTOOL}")
  set_tests_properties(integration_metrics integration_metrics_promtool PROPERTIES
                       TIMEOUT 120 LABELS "integration;router" SKIP_RETURN_CODE 77)
endif()
