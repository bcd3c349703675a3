# bazaar-fanout: the worker that fans domain events from RabbitMQ out to Soketi.
# Configuration comes only from the environment (docs/CONTRACT.md, section 1).
# The console's browser assets: clients/js and its pinned pusher-js, from npm (no CDN).
FROM node:20-slim AS console-assets
WORKDIR /app/clients/js
COPY clients/js/package.json clients/js/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY clients/js/src/ src/

FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The runtime dependencies only (no dev extras), from the pinned pyproject.
COPY pyproject.toml README.md ./
COPY schemas/ schemas/
COPY handlers/ handlers/
COPY worker/ worker/
# `python -m worker` runs from /app, so worker/console.py finds ../clients/js here.
COPY --from=console-assets /app/clients/js/ clients/js/
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin fanout

USER fanout

EXPOSE 8000

# Liveness only; readiness (RabbitMQ, MongoDB, Soketi) is /readyz. The slim image has no
# curl, so python's urllib does the request; it exits non-zero on any non-2xx answer.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HTTP_PORT', '8000'), timeout=3)"]

# SIGTERM stops consuming and drains in-flight work within DRAIN_TIMEOUT_S (default 20 s).
STOPSIGNAL SIGTERM
CMD ["python", "-m", "worker", "run"]
