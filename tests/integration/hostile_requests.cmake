# A catalog of hostile requests (HTTP framing, JSON, shapes, binary data, chunked
# coding, smuggling, header floods, pipelining, slowloris, hostile images, SP frames on
# the RPC endpoint) thrown at a real router and replicas over raw sockets, each case
# held to its status or a closed connection, while valid requests from other threads
# all succeed; descriptors and resident memory of every process checked afterwards.
corral_python_test(hostile_requests 300 "integration;router;python")
