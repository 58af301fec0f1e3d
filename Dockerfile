# The workflow in a container: every stage, the main job and the service, with the
# store on object storage (requirements-s3.txt: s3fs). See README.md, "On Kubernetes
# with a GPU only while the job runs".
#
# CPU (the default):
#   docker build -t image-index:cpu .
# GPU, CUDA 12 from pip's wheels (the host or the Kubernetes node brings the driver);
# the same swap as README.md's "GPU runtimes":
#   docker build -t image-index:gpu --build-arg FAISS=faiss-gpu-cu12 \
#       --build-arg TENSORFLOW='tensorflow[and-cuda]' .
# GPU on TensorFlow's own image (its TensorFlow already sees the GPU; 2.16 or later):
#   docker build -t image-index:gpu --build-arg BASE=tensorflow/tensorflow:2.17.0-gpu \
#       --build-arg FAISS=faiss-gpu-cu12 .
# Any Debian or Ubuntu image with Python 3.10+ and pip can be the BASE (python3 and
# python3-pip from the distribution will do).
ARG BASE=python:3.11-slim
FROM ${BASE}

# faiss-cpu (requirements.txt), or the Faiss that replaces it: faiss-gpu-cu12
ARG FAISS=faiss-cpu
# empty: TensorFlow as requirements.txt asks; or a requirement installed on top of it,
# such as tensorflow[and-cuda]
ARG TENSORFLOW=
# the requirement files installed: the CPU stack and s3fs (add requirements-spark.txt
# for --executor spark)
ARG REQUIREMENTS="requirements.txt requirements-s3.txt"

# PIP_BREAK_SYSTEM_PACKAGES: the Python of a Debian 12+ or Ubuntu 23.04+ BASE (python3,
# python3-pip) refuses pip's installs ("externally-managed-environment", PEP 668); in an
# image of its own, the workflow is what that Python is for. Ignored elsewhere.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHON=python3 \
    WORKFLOW_SCRATCH=/scratch

WORKDIR /app
COPY requirements*.txt ./
# annoy ships no wheels: g++ builds it, then goes; tini reaps the decoders' processes
# and passes signals on (the stages run as the container's first process otherwise).
# DL3013 (pin pip versions) is off here: the versions are the requirement files' (their
# minimum versions, as for every install of the workflow), and FAISS and TENSORFLOW are
# requirements that the build names, with a version where wanted (faiss-gpu-cu12==1.9.0);
# hadolint takes "$@" (the -r options) and "$FAISS" for unpinned package names.
# hadolint ignore=DL3013
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends tini g++ libstdc++6; \
    python3 -c 'import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' \
        || apt-get install -y --no-install-recommends python3-dev; \
    set --; for r in $REQUIREMENTS; do set -- "$@" -r "$r"; done; \
    python3 -m pip install "$@"; \
    if [ "$FAISS" != faiss-cpu ]; then \
        python3 -m pip uninstall -y faiss-cpu; python3 -m pip install "$FAISS"; \
    fi; \
    if [ -n "$TENSORFLOW" ]; then python3 -m pip install "$TENSORFLOW"; fi; \
    apt-get purge -y --auto-remove g++; \
    rm -rf /var/lib/apt/lists/*

COPY workflow/ workflow/
COPY scripts/ scripts/
COPY deploy/ deploy/
RUN chmod 755 deploy/entrypoint.sh \
    && (getent passwd 1000 >/dev/null || useradd --create-home --uid 1000 --user-group app) \
    && mkdir -p /scratch && chown 1000:1000 /scratch

# numeric, so that Kubernetes' runAsNonRoot can check it
USER 1000:1000
ENTRYPOINT ["/usr/bin/tini", "--", "/app/deploy/entrypoint.sh"]
CMD ["--help"]
