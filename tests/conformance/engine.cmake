# ONNX's own backend test data (Debian package libonnx-testdata) run through the
# engine. The runner exits 77 when the data directory is missing, which ctest
# reports as skipped.
#
# A test the engine refuses is a skip, so a lost op would only turn passes into
# skips; each run therefore enforces a committed baseline of the tests that pass
# (baseline-cpu.txt; conformance.c says how to regenerate it) and fails naming
# every listed test that no longer passes. Every run also writes its passing list
# to the build directory (tests/conformance-<device>-passing.txt).
set(CORRAL_ONNX_TESTDATA "/usr/share/libonnx-testdata/data" CACHE PATH
    "ONNX backend test data (node/, pytorch-converted/, pytorch-operator/, simple/)")
add_executable(corral-conformance ${CMAKE_CURRENT_LIST_DIR}/conformance.c)
target_link_libraries(corral-conformance PRIVATE corral_engine ${M_LIB})
add_test(NAME conformance
         COMMAND corral-conformance -q -b ${CMAKE_CURRENT_LIST_DIR}/baseline-cpu.txt
                 -w ${CMAKE_CURRENT_BINARY_DIR}/conformance-cpu-passing.txt
                 ${CORRAL_ONNX_TESTDATA})
set_tests_properties(conformance PROPERTIES SKIP_RETURN_CODE 77 LABELS "conformance;engine"
                     TIMEOUT 600)
# The same runner on cuda:0 in builds with the CUDA backend; without a device it
# prints "skipped: <reason>" and exits 77, which ctest reports as skipped. Until a
# GPU run has been recorded as baseline-cuda.txt, -B enforces nothing and says so;
# the first GPU run leaves its passing list in
# <build>/tests/conformance-cuda-passing.txt, ready to be committed as the baseline.
if(CORRAL_HAVE_CUDA_BACKEND)
  add_test(NAME conformance_cuda
           COMMAND corral-conformance -q -d cuda:0 -B ${CMAKE_CURRENT_LIST_DIR}/baseline-cuda.txt
                   -w ${CMAKE_CURRENT_BINARY_DIR}/conformance-cuda-passing.txt
                   ${CORRAL_ONNX_TESTDATA})
  set_tests_properties(conformance_cuda PROPERTIES SKIP_RETURN_CODE 77
                       LABELS "conformance;engine;cuda" TIMEOUT 900)
endif()
