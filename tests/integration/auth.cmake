# Bearer tokens on the router's inference endpoints, HTTP and RPC (corralctl --token-file).
corral_python_test(auth 180 "integration;router;python")
