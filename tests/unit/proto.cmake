add_executable(test_proto ${CMAKE_CURRENT_LIST_DIR}/test_proto.c)
target_link_libraries(test_proto PRIVATE corral_proto PkgConfig::CMOCKA)
add_test(NAME unit_proto COMMAND test_proto)
