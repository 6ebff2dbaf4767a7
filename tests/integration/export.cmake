# The export tool (deploy/export/export.py) end to end: real PyTorch models exported
# into temporary model repositories, every --checkpoint form and the batching flags,
# docs/from-pytorch.md run as written and served, and the bundled digits model checked
# against its held-out reference data. All need the tooling virtualenv's python
# (CORRAL_PYTHON); the replica-backed checks run when corral-replica is part of this build.
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
add_test(NAME integration_export_forms
         COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_export_forms.py)
# Skipped (77) when corral-replica or corral-router is not built.
add_test(NAME integration_from_pytorch
         COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_from_pytorch.py ${CMAKE_BINARY_DIR})
set_tests_properties(integration_export integration_export_digits integration_export_forms
                     integration_from_pytorch PROPERTIES SKIP_RETURN_CODE 77
                     LABELS "integration;python;export" TIMEOUT 900)
