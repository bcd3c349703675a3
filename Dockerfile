# bazaar-fanout: the worker that fans domain events from RabbitMQ out to Soketi.
# Configuration comes only from the environment (docs/CONTRACT.md, section 1).
#
# Three stages: npm fetches the console's browser assets, a build stage installs the package
# (setup.py copies those assets into it) into /opt/venv, and the runtime image gets only
# that venv. No source folder and no clients/js reach the runtime image.

# The console's browser assets: clients/js and its pinned pusher-js, from npm (no CDN).
FROM node:20-slim AS console-assets
WORKDIR /src/clients/js
COPY clients/js/package.json clients/js/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY clients/js/src/ src/

# Builds the wheel and installs it with the runtime dependencies only (no dev extras), pinned
# by pyproject.toml and constrained by requirements.lock, into a venv the runtime copies.
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml setup.py README.md requirements.lock ./
COPY schemas/ schemas/
COPY handlers/ handlers/
COPY worker/ worker/
# setup.py vendors pusher.min.js and clients/js/src into worker/web/console/static/vendor/.
COPY --from=console-assets /src/clients/js/ clients/js/
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -c requirements.lock .

FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

# The installed package and its dependencies, nothing else from the repository.
COPY --from=build /opt/venv/ /opt/venv/
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin fanout

# An empty working directory: `python -m worker` imports the installed package only.
WORKDIR /srv/fanout

USER fanout

EXPOSE 8000

# Liveness only; readiness (RabbitMQ, MongoDB, Soketi) is /readyz. The slim image has no
# curl, so python's urllib does the request; it exits non-zero on any non-2xx answer.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HTTP_PORT', '8000'), timeout=3)"]

# SIGTERM stops consuming and drains in-flight work within DRAIN_TIMEOUT_S (default 20 s).
STOPSIGNAL SIGTERM
CMD ["python", "-m", "worker", "run"]
