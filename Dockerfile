# corral's container image: corral-router, corral-replica, corral-scheduler and
# corralctl in /usr/local/bin, running as the unprivileged user 10001 (the
# manifests' runAsUser). Two stages: the build, on Debian 12 with deploy/setup.sh and
# cmake, then a runtime stage holding the binaries and exactly the shared libraries
# they load (collected with ldd), on the base image named by RUNTIME_IMAGE.
#
# CPU (the default, Debian 12 throughout):
#   docker build -t registry.example.com/corral/corral:0.1.0 .
# GPU: the CUDA toolkit from NVIDIA's Debian 12 repository for the build, and a CUDA
# runtime image (cuDNN included; glibc 2.36 or newer, since the build is Debian 12's)
# to run on, because the CUDA runtime is not a Debian package:
#   docker build --build-arg CUDA=12-6 \
#     --build-arg RUNTIME_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 \
#     -t registry.example.com/corral/corral:0.1.0-cuda .
#
# Base images are pinned by tag here; pin them by digest in your own builds
# (--build-arg BUILD_IMAGE=debian:12.11-slim@sha256:...). The model repository is
# not in the image: it comes from a volume (deploy/k8s/base/models-pvc.yaml).
ARG BUILD_IMAGE=debian:12.11-slim
ARG RUNTIME_IMAGE=debian:12.11-slim

FROM ${BUILD_IMAGE} AS build
# Empty: a CPU build. A CUDA package version suffix (12-6): the CUDA backend too.
ARG CUDA=
ARG CUDA_ARCHITECTURES=80;90
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY deploy/setup.sh deploy/setup.sh
# The Debian packages of the build (setup.sh's list; idempotent, run as root here).
RUN ./deploy/setup.sh \
 && if [ -n "$CUDA" ]; then \
      curl -fsSLo /tmp/cuda-keyring.deb \
        https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb \
      && dpkg -i /tmp/cuda-keyring.deb && rm /tmp/cuda-keyring.deb \
      && apt-get update -qq \
      && apt-get install -y -qq --no-install-recommends \
           "cuda-nvcc-$CUDA" "cuda-cudart-dev-$CUDA" "libcublas-dev-$CUDA" libcudnn9-dev-cuda-12; \
    fi \
 && rm -rf /var/lib/apt/lists/*
COPY . .
# The binaries, then every shared library they load (ldd) except glibc's, the C++
# runtime's and CUDA's, which the runtime image provides, registered with ldconfig.
RUN if [ -n "$CUDA" ]; then export PATH="/usr/local/cuda/bin:$PATH"; cuda=ON; else cuda=OFF; fi \
 && cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DCORRAL_CUDA="$cuda" \
          "-DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHITECTURES" \
 && cmake --build /build -j "$(nproc)" \
      --target corral-router corral-replica corral-scheduler corralctl \
 && mkdir -p /out/usr/local/bin /out/usr/local/lib/corral /out/etc/ld.so.conf.d \
 && cp /build/router/corral-router /build/replica/corral-replica \
       /build/scheduler/corral-scheduler /build/client/corralctl /out/usr/local/bin/ \
 && if [ -f /build/replica/libcorral_cuda.so ]; then \
      cp /build/replica/libcorral_cuda.so /out/usr/local/bin/; fi \
 && ldd /out/usr/local/bin/* | awk '$3 ~ /^\// {print $3}' | sort -u \
    | grep -Ev '/(libc|libm|libdl|librt|libpthread|libresolv|ld-linux[^/]*|libstdc\+\+|libgcc_s)\.so' \
    | grep -Ev '/(libcuda|libcudart|libcublas|libcublasLt|libcudnn[^/]*|libnvrtc[^/]*)\.so' \
    | xargs -r cp -L -t /out/usr/local/lib/corral/ \
 && echo /usr/local/lib/corral > /out/etc/ld.so.conf.d/corral.conf

FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=build /out/ /
RUN ldconfig \
 && corral-router --help > /dev/null \
 && corral-replica --help > /dev/null
# The numeric user the Kubernetes manifests run as (runAsNonRoot needs a number).
USER 10001:10001
EXPOSE 8000 8001 9101 8080
ENTRYPOINT ["/usr/local/bin/corral-router"]
CMD ["--help"]
