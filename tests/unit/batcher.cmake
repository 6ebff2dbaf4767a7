add_executable(test_batcher ${CMAKE_CURRENT_LIST_DIR}/test_batcher.c)
target_link_libraries(test_batcher PRIVATE corral_replica_core PkgConfig::CMOCKA)
add_test(NAME unit_batcher COMMAND test_batcher ${CMAKE_SOURCE_DIR}/models/digits/1/model.onnx)
set_tests_properties(unit_batcher PROPERTIES LABELS "unit;batching")
