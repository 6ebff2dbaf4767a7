# The dynamic batcher through real replica processes over NNG (C, needs no Python),
# and the router's view of a stopped replica (Python, through the real router).
add_library(corral_batching_models STATIC ${CMAKE_SOURCE_DIR}/bench/batching_models.c)
target_include_directories(corral_batching_models PUBLIC ${CMAKE_SOURCE_DIR}/bench)
target_link_libraries(corral_batching_models PUBLIC corral_engine)

if(CMOCKA_FOUND)
  add_executable(test_batching_nng ${CMAKE_CURRENT_LIST_DIR}/test_batching_nng.c)
  target_link_libraries(test_batching_nng PRIVATE corral_batching_models corral_proto nng::nng
                        PkgConfig::CMOCKA Threads::Threads)
  if(CORRAL_PYTHON)
    # The masked transformer of bench/models/zoo.py (small: d_model 32), exported once by
    # the export tool (which verifies it with onnxruntime and corral-replica) for the
    # concurrency test of variable-length sequences.
    set(_bt_repo ${CMAKE_BINARY_DIR}/test-batching-models)
    add_test(NAME integration_batching_transformer_export
             COMMAND ${CORRAL_PYTHON} ${CMAKE_SOURCE_DIR}/deploy/export/export.py
                     --builder bench.models.zoo:transformer_masked
                     --builder-args "{\"dim\": 32, \"ff\": 64}" --seed 0
                     --input ids:-1x-1:INT64:0:1000 --input mask:-1x-1:INT64:0:2 --output logits
                     --repo ${_bt_repo} --name transformer_masked --version 1 --overwrite
                     --replica $<TARGET_FILE:corral-replica>
             WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
    set_tests_properties(integration_batching_transformer_export PROPERTIES
                         TIMEOUT 300 LABELS "integration;batching;python"
                         FIXTURES_SETUP batching_transformer)
    add_test(NAME integration_batching_nng
             COMMAND test_batching_nng $<TARGET_FILE:corral-replica> ${CMAKE_SOURCE_DIR}/models/digits/1
                     ${_bt_repo}/transformer_masked/1)
    set_tests_properties(integration_batching_nng PROPERTIES FIXTURES_REQUIRED batching_transformer)
  else()
    message(STATUS "CORRAL_PYTHON is empty: the batching test of the masked transformer is skipped")
    add_test(NAME integration_batching_nng
             COMMAND test_batching_nng $<TARGET_FILE:corral-replica> ${CMAKE_SOURCE_DIR}/models/digits/1)
  endif()
  set_tests_properties(integration_batching_nng PROPERTIES TIMEOUT 300 LABELS "integration;batching")
endif()

# Closed-loop load generator for bench/batching.sh.
add_executable(batching_load ${CMAKE_SOURCE_DIR}/bench/batching_load.c)
target_link_libraries(batching_load PRIVATE corral_batching_models corral_proto nng::nng Threads::Threads)

if(CORRAL_PYTHON)
  add_test(NAME integration_batching_router
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_batching_router.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
  set_tests_properties(integration_batching_router PROPERTIES TIMEOUT 300 LABELS "integration;batching")
endif()
