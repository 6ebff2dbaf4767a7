# The SP transport's drivers on loopback, each against real NNG sockets and raw TCP peers
# sending bad bytes: the libuv client (interop, reconnection, bad peers, URLs, closing),
# the libuv server (interop, bad peers, limits, lifetimes, binding) and the epoll server.
if(TARGET PkgConfig::CMOCKA)
  add_executable(test_sp_uv_client ${CMAKE_CURRENT_LIST_DIR}/test_sp_uv_client.c)
  target_link_libraries(test_sp_uv_client PRIVATE corral_sp_uv PkgConfig::CMOCKA nng::nng)
  add_test(NAME unit_sp_uv_client COMMAND test_sp_uv_client)
  set_tests_properties(unit_sp_uv_client PROPERTIES LABELS "unit;router" TIMEOUT 60)

  add_executable(test_sp_uv_server ${CMAKE_CURRENT_LIST_DIR}/test_sp_uv_server.c)
  target_link_libraries(test_sp_uv_server PRIVATE corral_sp_uv PkgConfig::CMOCKA nng::nng)
  add_test(NAME unit_sp_uv_server COMMAND test_sp_uv_server)
  set_tests_properties(unit_sp_uv_server PROPERTIES LABELS "unit;router" TIMEOUT 60)

  add_executable(test_sp_epoll_server ${CMAKE_CURRENT_LIST_DIR}/test_sp_epoll_server.c)
  target_link_libraries(test_sp_epoll_server PRIVATE corral_sp_epoll nng::nng PkgConfig::CMOCKA
                        Threads::Threads)
  add_test(NAME unit_sp_epoll_server COMMAND test_sp_epoll_server)
  set_tests_properties(unit_sp_epoll_server PROPERTIES LABELS "unit;replica" TIMEOUT 120)
else()
  message(STATUS "SP transport tests skipped: cmocka not found")
endif()
