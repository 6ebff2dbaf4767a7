# corral-scheduler --check on real config files: the printed plan and the exact error
# lines of a bad config, with the repository's own models/.
if(CORRAL_PYTHON)
  add_test(NAME integration_sched_check
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_sched_check.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
  set_tests_properties(integration_sched_check PROPERTIES TIMEOUT 120
                       LABELS "integration;scheduler" SKIP_RETURN_CODE 77)
endif()
