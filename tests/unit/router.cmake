# Router tests: URL routing, Triton's model configuration and repository index bodies,
# the HTTP server over loopback sockets, the replica table (membership), its DNS
# discovery (numeric hosts only), and the real corral-router process on its own. The
# OIP JSON codec's tests are in oipjson.cmake.
if(TARGET PkgConfig::CMOCKA AND TARGET corral_router_core)
  foreach(t test_oip_route test_oip_config test_http test_membership test_dns)
    add_executable(${t} ${CMAKE_CURRENT_LIST_DIR}/${t}.c)
    target_link_libraries(${t} PRIVATE corral_router_core PkgConfig::CMOCKA PkgConfig::JANSSON)
    add_test(NAME router_${t} COMMAND ${t})
    set_tests_properties(router_${t} PROPERTIES LABELS "unit;router" TIMEOUT 60)
  endforeach()
  add_executable(test_router_process ${CMAKE_CURRENT_LIST_DIR}/test_router_process.c)
  target_link_libraries(test_router_process PRIVATE PkgConfig::CMOCKA)
  add_dependencies(test_router_process corral-router)
  add_test(NAME router_test_router_process COMMAND test_router_process $<TARGET_FILE:corral-router>
           WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
  set_tests_properties(router_test_router_process PROPERTIES LABELS "unit;router" TIMEOUT 60)
else()
  message(STATUS "router tests skipped: cmocka not found")
endif()
