# The router's DNS discovery (--replica NAME=dns://HOST:PORT) on loopback, with an
# /etc/hosts of the router's own: A and AAAA records, a failing name, control entries.
if(CORRAL_PYTHON)
  add_test(NAME integration_router_dns
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_router_dns.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
  set_tests_properties(integration_router_dns PROPERTIES TIMEOUT 300
                       LABELS "integration;router" SKIP_RETURN_CODE 77)
endif()
