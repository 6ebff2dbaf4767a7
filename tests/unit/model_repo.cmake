add_executable(test_model_repo ${CMAKE_CURRENT_LIST_DIR}/test_model_repo.c)
target_link_libraries(test_model_repo PRIVATE corral_replica_core PkgConfig::CMOCKA)
add_test(NAME unit_model_repo COMMAND test_model_repo)
