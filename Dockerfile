# Cluster image for launch/k8s_mpijob.yaml and launch/slurm.sbatch: CUDA 12.5 (the version
# TensorFlow 2.21's wheels are built with), TensorFlow 2.21 with CUDA, Open MPI and sshd,
# Horovod 0.28.1 with NCCL, MPI and Gloo, and dann_dist at /workspace/dann_dist.
#
#   docker build -t registry.example.com/dann-dist:tf2.21-cuda12.5 .
#   docker run --gpus all registry.example.com/dann-dist:tf2.21-cuda12.5 \
#     bash scripts/device_check.sh /workspace/dann_dist/runs/device_check
#
# The Python stack and the Horovod build come from scripts/setup_env.sh and
# scripts/horovod_build.sh, the same scripts as `make setup`: one list of packages, one set
# of Horovod build flags, one include fix for TF 2.21.
ARG CUDA_VERSION=12.5.1
ARG UBUNTU=ubuntu22.04

# --- Build stage: nvcc (Horovod's CUDA kernels), MPI headers, compilers --------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       python3.10 python3.10-venv python3.10-dev g++ make cmake libopenmpi-dev openmpi-bin \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /workspace/dann_dist
# Only what the environment depends on: editing the code does not rebuild this layer.
COPY setup.py ./
COPY scripts/setup_env.sh scripts/horovod_build.sh scripts/
RUN VENV=/opt/venv PYTHON=python3.10 DANN_SKIP_PACKAGE=1 \
    DANN_TF_PACKAGE="tensorflow[and-cuda]==2.21.0" \
    HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_WITH_MPI=1 HOROVOD_CUDA_HOME=/usr/local/cuda \
    DANN_HOROVOD_WHEELS=/tmp/horovod-wheels \
    bash scripts/setup_env.sh \
    && rm -rf /tmp/horovod-wheels

# --- Run stage ----------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU}
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1
# sshd: the MPI operator's workers run only sshd, and mpirun reaches them over ssh.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       python3.10 openmpi-bin libopenmpi3 openssh-server openssh-client \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /run/sshd
# Same base, same python3.10 path: the venv moves between the stages as it is.
COPY --from=build /opt/venv /opt/venv
ENV VENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
WORKDIR /workspace/dann_dist
COPY . .
RUN pip install --no-deps --no-build-isolation -e . \
    && python -c "import horovod.tensorflow as hvd; \
assert hvd.nccl_built() and hvd.mpi_built() and hvd.gloo_built(), 'horovod features'"
CMD ["python", "-m", "dann_dist.train", "--help"]
