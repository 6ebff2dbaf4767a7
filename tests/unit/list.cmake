# The intrusive list of common/list.h: order both ways after insertions and removals,
# removal of a node on no list, safe iteration, moving a whole list.
if(NOT TARGET PkgConfig::CMOCKA)
  message(STATUS "list tests skipped: cmocka not found")
  return()
endif()
add_executable(test_list ${CMAKE_CURRENT_LIST_DIR}/test_list.c)
target_link_libraries(test_list PRIVATE corral_common PkgConfig::CMOCKA)
add_test(NAME unit_list COMMAND test_list)
set_tests_properties(unit_list PROPERTIES LABELS "unit" TIMEOUT 60)
