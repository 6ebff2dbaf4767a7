# The small HTTP server of common/ (common/httpd.c: the replica's --health-listen) over
# loopback sockets: answers, bounds on untrusted bytes, deadlines, a full connection set.
if(TARGET PkgConfig::CMOCKA)
  add_executable(test_httpd ${CMAKE_CURRENT_LIST_DIR}/test_httpd.c)
  target_link_libraries(test_httpd PRIVATE corral_common PkgConfig::CMOCKA Threads::Threads)
  add_test(NAME unit_httpd COMMAND test_httpd)
  set_tests_properties(unit_httpd PROPERTIES LABELS "unit;replica" TIMEOUT 60)
else()
  message(STATUS "httpd tests skipped: cmocka not found")
endif()
