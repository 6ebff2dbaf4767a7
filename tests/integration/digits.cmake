# End-to-end tests through real corral-router and corral-replica processes.
if(CORRAL_PYTHON)
  add_test(NAME integration_digits_http
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_digits_http.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
  add_test(NAME integration_bad_models
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_bad_models.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
  set_tests_properties(integration_digits_http integration_bad_models PROPERTIES
                       TIMEOUT 300 LABELS integration)
else()
  message(STATUS "CORRAL_PYTHON not set: integration tests are not registered "
                 "(run ./tests/run.sh, which sets it)")
endif()
