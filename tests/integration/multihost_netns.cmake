# Hosts in network namespaces (198.18.0.0/24, made and removed by the test): the router
# follows replicas through DNS (dnsmasq) under load; a link cut, a link restored, a
# replica added to and one removed from DNS. Needs root and iproute2; skipped (77)
# where namespaces cannot be created.
if(CORRAL_PYTHON)
  add_test(NAME integration_multihost_netns
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_multihost_netns.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
  set_tests_properties(integration_multihost_netns PROPERTIES TIMEOUT 300
                       LABELS "integration;router;replica" SKIP_RETURN_CODE 77)
endif()
