# The hub's image: one image, two roles — `web` (gunicorn, the default) and `worker` (django-q2) — both started by
# scripts/entrypoint, the same script scripts/serve runs on a plain machine. compose.yaml shows it with PostgreSQL
# and Redis. Settings come from the environment (README, "Production").
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    DEBUG=0 \
    CELLHUB_VAR_DIR=/var/lib/cellhub \
    STATIC_ROOT=/app/staticfiles \
    PORT=8000

# pg_dump / pg_restore for database backups of PostgreSQL pools.
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Runtime requirements only: tests and tools (requirements-dev.txt) never reach the image.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
RUN useradd --system --home-dir /app --shell /usr/sbin/nologin cellhub \
    && mkdir -p "$CELLHUB_VAR_DIR" "$STATIC_ROOT" \
    && chown -R cellhub "$CELLHUB_VAR_DIR" "$STATIC_ROOT"
USER cellhub
VOLUME ["/var/lib/cellhub"]
EXPOSE 8000

# /healthz is exempt from the https redirect; the Host header must be one of ALLOWED_HOSTS.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD python -c "import os, urllib.request as u; \
host = os.environ.get('ALLOWED_HOSTS', 'localhost').split(',')[0].lstrip('.'); \
u.urlopen(u.Request('http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/healthz', headers={'Host': host}), timeout=4)"

ENTRYPOINT ["scripts/entrypoint"]
CMD ["web"]
