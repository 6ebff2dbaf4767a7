# The scheduler's operator page (GET / on the admin API) and the per-model traffic of
# its status, against a real corral-scheduler cluster under load: the page and the
# traffic over HTTP, then the page in headless chromium (Debian package chromium) in an
# entry of its own, skipped without it.
find_program(CORRAL_CHROMIUM NAMES chromium chromium-browser)
if(CORRAL_PYTHON)
  add_test(NAME integration_operator_page
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_operator_page.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
  add_test(NAME integration_operator_page_chromium
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_operator_page.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR} --chromium "${CORRAL_CHROMIUM}")
  set_tests_properties(integration_operator_page integration_operator_page_chromium
                       PROPERTIES TIMEOUT 300 LABELS "integration;scheduler"
                       SKIP_RETURN_CODE 77)
endif()
