# corral-scheduler --config running a real cluster (router and replicas as its
# children) under load from the test: a killed replica replaced with no failed
# request, a crash-looping one marked failed while the rest serve, a clean stop.
if(CORRAL_PYTHON)
  add_test(NAME integration_scheduler_run
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_scheduler_run.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
  set_tests_properties(integration_scheduler_run PROPERTIES TIMEOUT 300
                       LABELS "integration;scheduler" SKIP_RETURN_CODE 77)
endif()
