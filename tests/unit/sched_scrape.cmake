# The admin API's scraper of the router's metrics (scheduler/scrape.c): the parser on
# hand-built and hostile metric texts, the p99 arithmetic, the traffic between two
# samples, and the non-blocking client against loopback servers (limits, deadline).
if(TARGET PkgConfig::CMOCKA AND TARGET corral_sched_core)
  add_executable(test_sched_scrape ${CMAKE_CURRENT_LIST_DIR}/test_sched_scrape.c)
  target_link_libraries(test_sched_scrape PRIVATE corral_sched_core PkgConfig::CMOCKA
                        Threads::Threads m)
  add_test(NAME unit_sched_scrape COMMAND test_sched_scrape)
  set_tests_properties(unit_sched_scrape PROPERTIES LABELS "unit;scheduler" TIMEOUT 60)
else()
  message(STATUS "scheduler scrape tests skipped: cmocka not found")
endif()
