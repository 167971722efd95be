# Billing Triage in HTTP mode: `docker build -t billing-triage .` then see compose.yml.
# Slim, non-root, with a health check on /healthz. Configuration comes from the environment
# (README "Configuration"); nothing secret is baked into the image.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY handlers ./handlers
COPY integrations ./integrations
COPY prompts ./prompts
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LOG_FORMAT=json \
    PORT=3000
RUN useradd --system --uid 10001 --home-dir /app --create-home billing
COPY --from=build /install /usr/local
WORKDIR /app
USER billing
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '3000')}/healthz\", timeout=4).status == 200 else 1)"]
ENTRYPOINT ["billing-triage"]
CMD ["serve", "--port", "3000"]
