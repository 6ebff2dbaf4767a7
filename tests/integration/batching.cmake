# The dynamic batcher through real replica processes over NNG (C, needs no Python),
# and the router's view of a stopped replica (Python, through the real router).
add_library(corral_batching_models STATIC ${CMAKE_SOURCE_DIR}/bench/batching_models.c)
target_include_directories(corral_batching_models PUBLIC ${CMAKE_SOURCE_DIR}/bench)
target_link_libraries(corral_batching_models PUBLIC corral_engine)

if(CMOCKA_FOUND)
  add_executable(test_batching_nng ${CMAKE_CURRENT_LIST_DIR}/test_batching_nng.c)
  target_link_libraries(test_batching_nng PRIVATE corral_batching_models corral_proto nng::nng
                        PkgConfig::CMOCKA Threads::Threads)
  add_test(NAME integration_batching_nng
           COMMAND test_batching_nng $<TARGET_FILE:corral-replica> ${CMAKE_SOURCE_DIR}/models/digits/1)
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
