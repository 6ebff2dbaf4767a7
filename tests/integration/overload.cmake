# Bounded under overload (queue limits answer 429, RSS bounded and flat at more than 10x
# the sustainable rate, driven by wrk) and no descriptor leak after 10 000 connections.
if(CORRAL_PYTHON)
  add_test(NAME integration_overload
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_overload.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
  set_tests_properties(integration_overload PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77
                       LABELS "integration;router;replica;python")
endif()
