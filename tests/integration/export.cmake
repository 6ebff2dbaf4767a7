# The export tool (deploy/export/export.py) end to end: real PyTorch models exported
# into temporary model repositories, and the bundled digits model checked against its
# held-out reference data. Both need the tooling virtualenv's python (CORRAL_PYTHON);
# the replica-backed checks run when corral-replica is part of this build.
if(NOT CORRAL_PYTHON)
  message(STATUS "CORRAL_PYTHON is empty: skipping the export tool tests "
                 "(configure with -DCORRAL_PYTHON=<venv>/bin/python3 from deploy/setup.sh --python)")
  return()
endif()

set(CORRAL_EXPORT_TEST_ARGS "")
if(TARGET corral-replica)
  set(CORRAL_EXPORT_TEST_ARGS --replica $<TARGET_FILE:corral-replica>)
endif()

add_test(NAME integration_export
         COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_export.py ${CORRAL_EXPORT_TEST_ARGS})
add_test(NAME integration_export_digits
         COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_export_digits.py ${CORRAL_EXPORT_TEST_ARGS})
set_tests_properties(integration_export integration_export_digits PROPERTIES SKIP_RETURN_CODE 77
                     LABELS "integration;python;export" TIMEOUT 900)
