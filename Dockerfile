# syntax=docker/dockerfile:1
#
# Production image of the Deliberate gateway. It holds the gateway only: the
# model server (vLLM) runs in its own container, so neither vllm nor torch is
# ever installed here (see docker-compose.yml for the whole stack).
#
#   docker build -t deliberate-gateway .
#   docker run -p 8080:8080 -e DELIBERATE_CONFIG=/app/configs/examples/compose.yaml deliberate-gateway
#
# Two stages: `builder` turns the project and all its dependencies into wheels,
# `runtime` installs those wheels offline into a clean slim image, so no build
# tool, source tree or pip cache ends up in the final layers.

ARG PYTHON_IMAGE=python:3.11-slim

############################ builder ############################
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src

# Only what the wheel needs: metadata first, then the five packages.
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
COPY routing/ routing/
COPY strategies/ strategies/
COPY budgets/ budgets/
COPY metrics/ metrics/

# One wheel for the project plus one per dependency, so the runtime stage can
# install with --no-index and never reaches a package index itself.
RUN pip wheel --wheel-dir /wheels .

############################ runtime ############################
FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed numeric id, so orchestrators that insist on runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 deliberate \
    && useradd --system --uid 10001 --gid deliberate --home-dir /app \
       --no-create-home --shell /usr/sbin/nologin deliberate

# The wheels are bind-mounted from the builder rather than copied, so they
# never become a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels deliberate-gateway

WORKDIR /app

# Route tables, examples, Prometheus and Grafana files. Read-only for the
# service user: a deployment that wants to edit routes mounts its own copy.
COPY configs/ /app/configs/

# `deliberate serve` reads its bind address and routes file from these.
ENV DELIBERATE_HOST=0.0.0.0 \
    DELIBERATE_PORT=8080 \
    DELIBERATE_CONFIG=/app/configs/routes.yaml

USER 10001:10001

EXPOSE 8080

# The slim image has no curl; urllib raises on refusal, timeout or a non-2xx
# status, which makes python exit 1 and marks the container unhealthy.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('DELIBERATE_PORT', '8080'), timeout=4)"]

CMD ["deliberate", "serve"]
