# models/<name>/aliases.json: the parser on hostile files, the atomic writer, and the
# replica's reading of the aliases of the version it loads.
if(TARGET PkgConfig::CMOCKA)
  add_executable(test_aliases ${CMAKE_CURRENT_LIST_DIR}/test_aliases.c)
  target_link_libraries(test_aliases PRIVATE corral_replica_core corral_aliases PkgConfig::CMOCKA)
  add_test(NAME unit_aliases COMMAND test_aliases)
  set_tests_properties(unit_aliases PROPERTIES LABELS "unit" TIMEOUT 60)
endif()
