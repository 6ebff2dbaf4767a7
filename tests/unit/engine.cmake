add_executable(test_engine ${CMAKE_CURRENT_LIST_DIR}/test_engine.c)
target_link_libraries(test_engine PRIVATE corral_engine PkgConfig::CMOCKA ${M_LIB})
add_test(NAME unit_engine COMMAND test_engine)
set_tests_properties(unit_engine PROPERTIES LABELS "unit;engine")
