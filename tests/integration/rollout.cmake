# Rolling updates through corral-scheduler under load: v1 -> v2, an aborted v3 whose
# parity vectors do not match, a rollback, a canary promoted with corralctl; and the
# router SIGKILLed under load (restarted with the replicas that serve).
if(CORRAL_PYTHON)
  add_test(NAME integration_rollout
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_rollout.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
  set_tests_properties(integration_rollout PROPERTIES TIMEOUT 420
                       LABELS "integration;scheduler" SKIP_RETURN_CODE 77)
endif()
