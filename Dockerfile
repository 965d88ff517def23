# One image for every engine service; compose.yaml picks the command (python -m services.<name>).
FROM python:3.11-slim
WORKDIR /app
# PYTHONPATH: the services run from /app (where instruments.toml, config/, migrations/ and alembic.ini
# are found relative to the code), never from the copy pip puts in site-packages.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONPATH=/app
# The public demo API keys (config/demo_api_keys.toml) are refused unless ALLOW_DEMO_KEYS=1: an image is
# for deployments, which bring their own API_KEYS_FILE (python -m services.apikeys create).
ENV ALLOW_DEMO_KEYS=0
COPY pyproject.toml README.md ./
COPY services ./services
RUN pip install --no-cache-dir .
COPY instruments.toml alembic.ini ./
COPY config ./config
COPY migrations ./migrations
COPY scripts ./scripts
# Not root: nothing here writes to disk.
RUN useradd --system --no-create-home engine
USER engine
# ingest, broadcaster, matcher metrics, persister metrics
EXPOSE 3000 3001 9101 9102
CMD ["python", "-m", "services.ingest"]
