# The fabric's CPU image: routers, simulated workers and the lag monitor.
#   docker build -t slm-fabric .            (compose.yaml builds it for you)
# GPU workers use Dockerfile.vllm instead: the same code on top of vLLM's CUDA image.

# Build stage: a wheel with the router's C twins (router/_scan.c, _prefix.c, _choice.c) compiled. The slim image
# has no C compiler, and without one the install falls back to the slower Python pass.
FROM python:3.11-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the package needs (.dockerignore keeps the rest of the tree out).
COPY pyproject.toml setup.py README.md ./
COPY subjects ./subjects
COPY router ./router
COPY workers ./workers
COPY fabric ./fabric
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home slm

USER slm
# /metrics of whichever component runs (SLM_METRICS_PORT in compose.yaml).
EXPOSE 9100
ENTRYPOINT ["slm-fabric"]
CMD ["router"]
