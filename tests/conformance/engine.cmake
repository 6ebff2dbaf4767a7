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
# The same runner on cuda:0 in builds with the CUDA backend; without a device it
# prints "skipped: <reason>" and exits 77, which ctest reports as skipped.
if(CORRAL_HAVE_CUDA_BACKEND)
  add_test(NAME conformance_cuda COMMAND corral-conformance -q -d cuda:0 ${CORRAL_ONNX_TESTDATA})
  set_tests_properties(conformance_cuda PROPERTIES SKIP_RETURN_CODE 77
                       LABELS "conformance;engine;cuda" TIMEOUT 900)
endif()
