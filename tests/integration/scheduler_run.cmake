# corral-scheduler --config running a real cluster (router and replicas as its
# children) under load from the test: a killed replica replaced with no failed
# request, a crash-looping one marked failed while the rest serve, a clean stop;
# the admin API (status, health, metrics, token) and corralctl status --admin.
# promtool (Debian package prometheus) checks the scheduler's /metrics in an entry of
# its own, skipped without it.
find_program(CORRAL_PROMTOOL promtool)
if(CORRAL_PYTHON)
  add_test(NAME integration_scheduler_run
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_scheduler_run.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
  add_test(NAME integration_scheduler_admin_promtool
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_scheduler_run.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR} --promtool "${CORRAL_PROMTOOL}")
  set_tests_properties(integration_scheduler_run PROPERTIES TIMEOUT 420
                       LABELS "integration;scheduler" SKIP_RETURN_CODE 77)
  set_tests_properties(integration_scheduler_admin_promtool PROPERTIES TIMEOUT 120
                       LABELS "integration;scheduler" SKIP_RETURN_CODE 77)
endif()
