# ONNX's own backend test data (Debian package libonnx-testdata) run through the
# engine. The runner exits 77 when the data directory is missing, which ctest
# reports as skipped.
set(CORRAL_ONNX_TESTDATA "/usr/share/libonnx-testdata/data" CACHE PATH
    "ONNX backend test data (node/, pytorch-converted/, pytorch-operator/, simple/)")
add_executable(corral-conformance ${CMAKE_CURRENT_LIST_DIR}/conformance.c)
target_link_libraries(corral-conformance PRIVATE corral_engine ${M_LIB})
add_test(NAME conformance COMMAND corral-conformance -q ${CORRAL_ONNX_TESTDATA})
set_tests_properties(conformance PROPERTIES SKIP_RETURN_CODE 77 LABELS "conformance;engine"
                     TIMEOUT 600)
