# The router's SP REP server (router/sp_serve.c) on a libuv loop, against a real NNG REQ
# socket and raw TCP peers on loopback: interop, bad peers, limits, lifetimes, binding.
if(TARGET PkgConfig::CMOCKA AND TARGET corral_router_core)
  add_executable(test_sp_serve ${CMAKE_CURRENT_LIST_DIR}/test_sp_serve.c)
  target_link_libraries(test_sp_serve PRIVATE corral_router_core PkgConfig::CMOCKA nng::nng)
  add_test(NAME unit_sp_serve COMMAND test_sp_serve)
  set_tests_properties(unit_sp_serve PROPERTIES LABELS "unit;router" TIMEOUT 60)
else()
  message(STATUS "sp_serve tests skipped: cmocka not found")
endif()
