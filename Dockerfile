# Perceptor image: the web server (daphne) and the training worker (celery) run from it.
# docker-compose.yml starts both, with Redis and PostgreSQL. Build: docker compose build

# Front-end libraries from npm (package-lock.json), only their files go into the final image.
FROM node:20-bookworm-slim AS frontend
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PERCEPTOR_VAR_DIR=/data/var \
    MEDIA_ROOT=/data/media
WORKDIR /app

# Everything comes as wheels (soundfile's bundles libsndfile): no compiler, no apt packages.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY --from=frontend /app/node_modules ./node_modules
COPY . .
# Static files are collected at build time and served by WhiteNoise. The key only lets settings load.
RUN DEBUG=False SECRET_KEY=collectstatic-only PERCEPTOR_VAR_DIR=/tmp/var python manage.py collectstatic --noinput \
 && useradd --create-home --uid 1000 perceptor \
 && mkdir -p /data/var /data/media \
 && chown -R perceptor /data
USER perceptor
VOLUME ["/data"]
EXPOSE 8000
CMD ["daphne", "--bind", "0.0.0.0", "--port", "8000", "webapp.asgi:application"]
