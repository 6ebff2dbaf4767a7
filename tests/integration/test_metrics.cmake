# GET /metrics validated by promtool (Debian package prometheus).
find_program(CORRAL_PROMTOOL promtool)
if(CORRAL_PYTHON)
  add_test(NAME integration_metrics
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_metrics.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR} "${CORRAL_PROMTOOL}")
  set_tests_properties(integration_metrics PROPERTIES TIMEOUT 120 LABELS "integration;router")
endif()
