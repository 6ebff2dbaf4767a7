# The deployment files (deploy/k8s/, Dockerfile, deploy/systemd/): Kubernetes schemas
# (kubernetes-validate, 1.32) and checkov on the manifests and on the CPU overlay as
# the test renders it, labels, ports and grace periods, static Dockerfile checks,
# systemd-analyze verify, then the real binaries run with the manifests' arguments and
# probed where the manifests' probes look. The checkers live in a virtualenv of their
# own (deploy/k8s/tools-venv.sh); skipped only when PyPI cannot be reached for them.
if(CORRAL_PYTHON)
  add_test(NAME integration_k8s_manifests
           COMMAND ${CORRAL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_k8s_manifests.py
                   ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
  set_tests_properties(integration_k8s_manifests PROPERTIES TIMEOUT 600
                       LABELS "integration;deploy" SKIP_RETURN_CODE 77)
endif()
