# The router's replica table at run time through its control endpoint, under load from
# the test: add, drain, remove, add back; acknowledgement only after every thread;
# bad requests and tokens; corralctl replicas.
if(CORRAL_PYTHON)
  add_test(NAME integration_replica_table
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_replica_table.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
  set_tests_properties(integration_replica_table PROPERTIES TIMEOUT 300
                       LABELS "integration;router" SKIP_RETURN_CODE 77)
endif()
