# The gateway image: Python 3.11 slim, runtime dependencies only, a non-root user, a health check on /health.
#
#   docker build -t openai-proxy .
#   docker run -p 3200:3200 -e JWT_SECRET=... -e NODE_URLS=... openai-proxy
#
# On `docker stop` the gateway gets SIGTERM, stops accepting connections and lets running streams finish for
# SHUTDOWN_GRACE_SECONDS (30 s): give it that long (`docker stop -t 40`, compose `stop_grace_period: 40s`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TIKTOKEN_CACHE_DIR=/opt/tiktoken-cache \
    HOST=0.0.0.0 \
    PORT=3200

# Runtime dependencies only: `pip install .`, never the `test` extra. No compiler is needed: every dependency
# ships wheels for this base image. The sources are removed afterwards: the installed package is what runs.
COPY pyproject.toml README.md /tmp/src/
COPY openai_proxy /tmp/src/openai_proxy
RUN pip install /tmp/src && rm -rf /tmp/src

# tiktoken's cl100k_base tables (1.7 MB), baked in: tiktoken downloads them on first use, which a gateway
# without internet access cannot do. docker/tiktoken-cache/ is copied in first. Offline builds: put the file
# there beforehand (`make tiktoken-cache TIKTOKEN_CACHE_DIR=...` copies it from a machine that has run the
# gateway once; see docker/tiktoken-cache/README.md) and nothing is fetched. Online builds: the folder holds
# only its README and the RUN line below downloads the file once, at build time.
COPY docker/tiktoken-cache/ /opt/tiktoken-cache/
RUN python -c "import tiktoken; tiktoken.get_encoding('cl100k_base')"

RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway
USER gateway
WORKDIR /app

EXPOSE 3200
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '3200') + '/health', timeout=4)"]
STOPSIGNAL SIGTERM
CMD ["openai-proxy", "serve"]
