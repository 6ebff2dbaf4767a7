# A catalog of hostile requests (HTTP framing, JSON, shapes, binary data, chunked
# coding, smuggling, header floods, pipelining, slowloris, hostile images, SP frames on
# the RPC endpoint) thrown at a real router and replicas over raw sockets, each case
# held to its status or a closed connection, while valid requests from other threads
# all succeed; descriptors and resident memory of every process checked afterwards.
if(CORRAL_PYTHON)
  add_test(NAME integration_hostile_requests
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_hostile_requests.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
  set_tests_properties(integration_hostile_requests PROPERTIES TIMEOUT 300
                       LABELS "integration;router;python")
endif()
