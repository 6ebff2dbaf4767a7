# Version aliases (models/<name>/aliases.json): OIP paths and RPC through the router
# naming an alias, corralctl alias writing the file atomically, and a rollout by
# changing an alias and applying the cluster config again.
if(CORRAL_PYTHON)
  add_test(NAME integration_aliases
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_aliases.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
  set_tests_properties(integration_aliases PROPERTIES TIMEOUT 300
                       LABELS "integration;scheduler" SKIP_RETURN_CODE 77)
endif()
