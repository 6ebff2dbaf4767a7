# libcorral end to end: 1000 async requests through a real router, the example
# program and corralctl (driven by test_client.py, which starts the cluster).
if(TARGET corral_client)
  add_executable(test_client_async ${CMAKE_CURRENT_LIST_DIR}/test_client_async.c)
  target_link_libraries(test_client_async PRIVATE corral_client Threads::Threads)
  if(CORRAL_PYTHON)
    add_test(NAME integration_client
             COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_client.py
                     ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
    set_tests_properties(integration_client PROPERTIES TIMEOUT 180 LABELS "integration;router")
  endif()
endif()
