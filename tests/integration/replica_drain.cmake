# The replica's states (starting, ready, failed, draining) and its drain on SIGTERM,
# through real corral-replica processes over NNG (C, needs no Python).
if(CMOCKA_FOUND)
  add_executable(test_replica_drain ${CMAKE_CURRENT_LIST_DIR}/test_replica_drain.c)
  target_link_libraries(test_replica_drain PRIVATE corral_batching_models corral_proto nng::nng
                        PkgConfig::CMOCKA Threads::Threads)
  add_test(NAME integration_replica_drain
           COMMAND test_replica_drain $<TARGET_FILE:corral-replica> ${CMAKE_SOURCE_DIR}/models/digits/1)
  set_tests_properties(integration_replica_drain PROPERTIES TIMEOUT 300
                       LABELS "integration;replica" SKIP_RETURN_CODE 77)
endif()
