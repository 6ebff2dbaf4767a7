# The replica's SP REP server (replica/sp_rep.c) on loopback, against real NNG REQ
# sockets and raw sockets sending bad bytes.
if(TARGET PkgConfig::CMOCKA)
  add_executable(test_sp_rep ${CMAKE_CURRENT_LIST_DIR}/test_sp_rep.c)
  target_link_libraries(test_sp_rep PRIVATE corral_replica_core nng::nng PkgConfig::CMOCKA
                        Threads::Threads)
  add_test(NAME unit_sp_rep COMMAND test_sp_rep)
  set_tests_properties(unit_sp_rep PROPERTIES LABELS "unit;replica" TIMEOUT 120)
else()
  message(STATUS "sp_rep tests skipped: cmocka not found")
endif()
