# One image for every engine service; compose.yaml picks the command.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY services ./services
RUN pip install --no-cache-dir .
COPY instruments.toml alembic.ini ./
COPY config ./config
COPY migrations ./migrations
COPY scripts ./scripts
EXPOSE 3000 3001 9101 9102
CMD ["python", "-m", "services.ingest"]
