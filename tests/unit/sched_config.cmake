# The scheduler's cluster config and placement: a catalog of malformed configs (exact
# JSON path and message of each error) and placements on a machine described by hand.
if(TARGET PkgConfig::CMOCKA AND TARGET corral_sched_core)
  add_executable(test_sched_config ${CMAKE_CURRENT_LIST_DIR}/test_sched_config.c)
  target_link_libraries(test_sched_config PRIVATE corral_sched_core PkgConfig::CMOCKA)
  add_test(NAME unit_sched_config COMMAND test_sched_config)
  set_tests_properties(unit_sched_config PROPERTIES LABELS "unit;scheduler" TIMEOUT 60)
else()
  message(STATUS "scheduler unit tests skipped: cmocka not found")
endif()
