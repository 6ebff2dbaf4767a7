# The router's SP REQ client (router/sp_req.c) on a libuv loop, against a real NNG REP
# socket and raw TCP peers on loopback: interop, reconnection, bad peers, URLs, closing.
if(TARGET PkgConfig::CMOCKA AND TARGET corral_router_core)
  add_executable(test_sp_req ${CMAKE_CURRENT_LIST_DIR}/test_sp_req.c)
  target_link_libraries(test_sp_req PRIVATE corral_router_core PkgConfig::CMOCKA nng::nng)
  add_test(NAME unit_sp_req COMMAND test_sp_req)
  set_tests_properties(unit_sp_req PROPERTIES LABELS "unit;router" TIMEOUT 60)
else()
  message(STATUS "sp_req tests skipped: cmocka not found")
endif()
