"""Perceptor settings: one file, driven by environment variables.

Every variable has a default that works on a developer's machine; bad values fail loudly.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def envbool(name: str, default: str) -> bool:
    value = os.getenv(name, default)
    if value not in ("True", "False", "1", "0", "true", "false"):
        raise ImproperlyConfigured(f"Unexpected value {name}={value}, use True or False")
    return value in ("True", "1", "true")


def envint(name: str, default: int) -> int:
    value = os.getenv(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"Unexpected value {name}={value}, use a whole number") from None


DEBUG = envbool("DEBUG", "True")
SECRET_KEY = os.getenv("SECRET_KEY", "dev-only-secret-key-change-me" if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG=False")
ALLOWED_HOSTS = os.getenv("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")
CSRF_TRUSTED_ORIGINS = [o for o in os.getenv("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "webapp.accounts",
    "webapp.datasets",
    "webapp.registry",
    "webapp.api",
    "jobs",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "webapp.urls"
ASGI_APPLICATION = "webapp.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "webapp.accounts.context_processors.site",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------------------------
# SQLite by default; DATABASE_URL (postgres://...) for PostgreSQL. The SQLite test database is a
# file, not memory, so that a Celery worker and a web server started by the integration tests can
# share it; WAL and a busy timeout let them write concurrently.
VAR_DIR = Path(os.getenv("PERCEPTOR_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)
DATABASE_URL = os.getenv("DATABASE_URL", f"sqlite:///{VAR_DIR / 'perceptor.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
ALLOW_SIGNUP = envbool("PERCEPTOR_ALLOW_SIGNUP", "True")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Files ------------------------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = Path(os.getenv("STATIC_ROOT", BASE_DIR / "staticfiles"))  # collectstatic (the Docker image)
STATIC_ROOT.mkdir(exist_ok=True)  # whitenoise warns on every request when it is missing
NODE_MODULES = BASE_DIR / "node_modules"
# Front-end libraries come from npm (package.json) and are served from here, never from a CDN.
STATICFILES_DIRS = [
    BASE_DIR / "static",
    ("vendor/chart.js", NODE_MODULES / "chart.js" / "dist"),
    ("vendor/pico", NODE_MODULES / "@picocss" / "pico" / "css"),
]
# From big packages only the files a page needs (webapp/staticfiles.py): in-browser inference uses
# onnxruntime-web's WASM-only runtime, which loads its .mjs/.wasm pair from the same folder.
STATICFILES_NODE_FILES = {
    "vendor/onnxruntime-web": (NODE_MODULES / "onnxruntime-web" / "dist",
                               ["ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"]),
}
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "webapp.staticfiles.NodeFilesFinder",
]
WHITENOISE_USE_FINDERS = True  # serve straight from the finders too, no collectstatic needed
MEDIA_ROOT = Path(os.getenv("MEDIA_ROOT", VAR_DIR / "media"))
MEDIA_URL = "/media/"  # never served directly: files go out through views that check ownership

# Upload and archive limits (bytes). An archive is refused before extraction when its members
# would expand past PERCEPTOR_MAX_EXPANDED_MB or compress better than PERCEPTOR_MAX_RATIO.
MAX_UPLOAD_BYTES = envint("PERCEPTOR_MAX_UPLOAD_MB", 2048) * 1024 * 1024
MAX_EXPANDED_BYTES = envint("PERCEPTOR_MAX_EXPANDED_MB", 8192) * 1024 * 1024
MAX_ARCHIVE_RATIO = envint("PERCEPTOR_MAX_RATIO", 200)
MAX_ARCHIVE_MEMBERS = envint("PERCEPTOR_MAX_FILES", 2_000_000)
MAX_PREDICT_BYTES = envint("PERCEPTOR_MAX_PREDICT_MB", 20) * 1024 * 1024
# A speech clip longer than this is skipped at ingest (with the reason), before it is decoded.
MAX_CLIP_SECONDS = envint("PERCEPTOR_MAX_CLIP_SECONDS", 30)
FILE_UPLOAD_MAX_MEMORY_SIZE = 4 * 1024 * 1024  # bigger uploads stream to a temporary file
DATA_UPLOAD_MAX_MEMORY_SIZE = 8 * 1024 * 1024

# --- Redis, Celery, Channels ------------------------------------------------------------------
REDIS_URL = os.getenv("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = os.getenv("CELERY_QUEUE", "perceptor")
CELERY_TASK_ALWAYS_EAGER = envbool("CELERY_TASK_ALWAYS_EAGER", "False")
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # one job at a time per worker (one worker per GPU)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A training task stays unacknowledged for the whole run (acks_late). Redis hands an unacknowledged
# message to another worker once visibility_timeout has passed; a copy delivered early is harmless
# (the job's lease in the database lets only one process run it) but wasteful, so this is longer
# than a training run. Recovery from a dead worker does not wait for it: the reaper requeues the job
# once its heartbeat is stale (README "Jobs and faults"). The same value for the result backend, so
# the two can never disagree (results are not stored today).
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 12 * 3600}
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"visibility_timeout": 12 * 3600}
# When the worker loses Redis, keep training: the job's state is in the database and its lease stops
# a second copy from running if the message comes back. (True would kill hours of training for a
# Redis blip; Celery 6 makes True the default, hence set explicitly.)
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# Job heartbeats and the reaper (seconds). A dead job shows "running" at most
# JOB_STALE_AFTER_S + JOB_REAP_EVERY_S (40 s by default); on the same host a dead pid is seen at once.
JOB_HEARTBEAT_S = envint("PERCEPTOR_HEARTBEAT_S", 5)
JOB_STALE_AFTER_S = envint("PERCEPTOR_STALE_AFTER_S", 30)
JOB_REAP_EVERY_S = envint("PERCEPTOR_REAP_EVERY_S", 10)
if not 0 < JOB_HEARTBEAT_S * 2 <= JOB_STALE_AFTER_S:
    raise ImproperlyConfigured("PERCEPTOR_STALE_AFTER_S must be at least twice PERCEPTOR_HEARTBEAT_S (and both above 0)")
if JOB_REAP_EVERY_S <= 0:
    raise ImproperlyConfigured(f"Unexpected value PERCEPTOR_REAP_EVERY_S={JOB_REAP_EVERY_S}, use a number of seconds above 0")
# A running job also checkpoints mid-epoch once this many seconds have passed since its last write,
# so a killed worker loses at most min(one epoch, this) of training; each write is a torch.save
# of model and optimizer state plus fsyncs, hence not every step.
JOB_CHECKPOINT_EVERY_S = envint("PERCEPTOR_CHECKPOINT_EVERY_S", 60)
if JOB_CHECKPOINT_EVERY_S <= 0:
    raise ImproperlyConfigured(
        f"Unexpected value PERCEPTOR_CHECKPOINT_EVERY_S={JOB_CHECKPOINT_EVERY_S}, use a number of seconds above 0")

CHANNEL_LAYER = os.getenv("CHANNEL_LAYER", "redis")
if CHANNEL_LAYER == "redis":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py 8 reads with a 5 s socket timeout by default, as long as the layer's
                # blocking BZPOPMIN waits: idle websockets then die every ~5 s
                # (django/channels_redis#422). Longer than the pop, still notices a dead Redis.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
                "prefix": os.getenv("CHANNEL_PREFIX", "perceptor"),
                # A slow websocket client cannot make memory grow: each consumer's channel holds at
                # most `capacity` messages (more are dropped, the page repairs itself from the
                # history on reconnect) and undelivered ones expire after `expiry` seconds.
                "capacity": 100,
                "expiry": 60,
            },
        }
    }
elif CHANNEL_LAYER == "memory":
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
else:
    raise ImproperlyConfigured(f"Unexpected value CHANNEL_LAYER={CHANNEL_LAYER}, use redis or memory")

# --- API --------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Perceptor API",
    "DESCRIPTION": "Upload datasets, train models, watch jobs and predict.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Training ---------------------------------------------------------------------------------
# "auto" uses CUDA when the worker has it. Checked by the worker, not the web server.
TRAIN_DEVICE = os.getenv("PERCEPTOR_DEVICE", "auto")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.getenv("LOG_LEVEL", "INFO")},
    "loggers": {"daphne": {"level": "WARNING"}},
}
