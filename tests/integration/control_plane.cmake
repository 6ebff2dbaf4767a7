# The rules of the control plane kept and broken on purpose, under load, with real
# replicas and a real router: drain, retry of draining refusals, removal before stop.
if(CORRAL_PYTHON)
  add_test(NAME integration_control_plane
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_control_plane.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
  set_tests_properties(integration_control_plane PROPERTIES TIMEOUT 300
                       LABELS "integration;router;replica" SKIP_RETURN_CODE 77)
endif()
