# The soak (tests/soak.sh, tests/soak.py): a scheduler-run cluster under mixed load (HTTP
# JSON, binary tensors, RPC, images) for CORRAL_SOAK_MINUTES minutes, a replica SIGKILLed
# every 30 s, a rolling update and a scale change in the middle; every request answered
# exactly once, /metrics equal to what the soak counted, router and scheduler RSS flat.
# Skipped unless CORRAL_SOAK_MINUTES is set (tests/run.sh's Release pass sets 2). It runs
# alone (RUN_SERIAL): its load would slow the tests beside it, and theirs its replicas.
if(CORRAL_PYTHON)
  add_test(NAME integration_soak
           COMMAND ${CMAKE_SOURCE_DIR}/tests/soak.sh --ctest ${CMAKE_BINARY_DIR})
  set_tests_properties(integration_soak PROPERTIES TIMEOUT 400 RUN_SERIAL TRUE
                       ENVIRONMENT "CORRAL_PYTHON=${CORRAL_PYTHON}"
                       LABELS "integration;scheduler;soak" SKIP_RETURN_CODE 77)
endif()
