# syntax=docker/dockerfile:1
# The Opspawn agent runner: pulls task attempts from the work queue and runs agent loops, its local
# tools in a sandbox of worker processes. Scale by running more copies. Build from the repository
# root:
#   docker build -f deploy/docker/agent-runner.Dockerfile -t opspawn/agent-runner .
#
# tests/deploy/test_images.py builds a venv the way the builder stage does (its COPY and `uv sync`
# lines) and starts it the way the final stage does (its ENV, ENTRYPOINT and HEALTHCHECK), against
# a real NATS and PostgreSQL: keep those instructions in the plain forms it reads.

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

# --- builder: the locked dependencies and the workspace packages, as wheels, in /opt/venv --------
FROM python:3.11-slim-bookworm AS builder
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
# The dependencies first, from the lock and every member's pyproject.toml only: this layer is
# rebuilt when the lock changes, not at every source edit.
COPY pyproject.toml uv.lock ./
COPY libs/agentkit/pyproject.toml libs/agentkit/
COPY libs/api/pyproject.toml libs/api/
COPY libs/contracts/pyproject.toml libs/contracts/
COPY libs/embedded/pyproject.toml libs/embedded/
COPY libs/messaging/pyproject.toml libs/messaging/
COPY libs/observability/pyproject.toml libs/observability/
COPY libs/readmodel/pyproject.toml libs/readmodel/
COPY services/agent-runner/pyproject.toml services/agent-runner/
COPY services/gateway/pyproject.toml services/gateway/
COPY services/mcp-proxy/pyproject.toml services/mcp-proxy/
COPY services/scheduler/pyproject.toml services/scheduler/
COPY apps/cli/pyproject.toml apps/cli/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --package opspawn-agent-runner --frozen --no-dev --no-editable --no-install-workspace
COPY libs libs
COPY services services
COPY apps apps
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --package opspawn-agent-runner --frozen --no-dev --no-editable

# --- final: the interpreter and the venv; no compilers, no uv, no sources, not root -------------
FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 opspawn \
    && useradd --system --uid 10001 --gid opspawn --create-home --home-dir /home/opspawn \
        --shell /usr/sbin/nologin opspawn
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OPSPAWN_OPS_HOST=0.0.0.0 \
    OPSPAWN_OPS_PORT=9090
USER 10001:10001
WORKDIR /home/opspawn
EXPOSE 9090
# On SIGTERM the runner stops pulling, lets running tasks finish for OPSPAWN_SHUTDOWN_GRACE_SECONDS,
# releases the rest to other runners, and exits 0.
STOPSIGNAL SIGTERM
# Healthy = ready: NATS connected and the shared work consumer exists.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ['OPSPAWN_OPS_PORT'], timeout=4)"]
ENTRYPOINT ["python", "-m", "agent_runner"]
