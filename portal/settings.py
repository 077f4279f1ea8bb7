"""Settings of the Cell Hub, read from the environment.

Development defaults are safe and need nothing: SQLite under ``var/``, the django-q2 ORM broker,
console e-mail. Production sets ``DEBUG=0``, ``SECRET_KEY``, ``ALLOWED_HOSTS`` and ``DATABASE_URL``
(PostgreSQL through psycopg 3); a secret never has a production default.
"""
import os
from datetime import timedelta
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
# Folders under VAR_DIR are created by the code that writes them, not here.
VAR_DIR = Path(environ.Env().str("CELLHUB_VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env(
    DEBUG=(bool, False),
    ALLOWED_HOSTS=(list, ["127.0.0.1", "localhost"]),
    CSRF_TRUSTED_ORIGINS=(list, []),
)

DEBUG = env("DEBUG")
# A fixed key is tolerable only while DEBUG is on; production must provide its own.
SECRET_KEY = env.str("SECRET_KEY", default="") or (
    "dev-insecure-cellhub-key-only-for-debug" if DEBUG else environ.ImproperlyConfigured("SECRET_KEY is required")
)
if isinstance(SECRET_KEY, Exception):
    raise SECRET_KEY
ALLOWED_HOSTS = env("ALLOWED_HOSTS")
CSRF_TRUSTED_ORIGINS = env("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_q",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "cells",
    "provisioning",
    "portal",
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
    # Last: turns a lockout decided during authentication into its reply (portal.accounts.lockout_response).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

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
            ],
        },
    },
]

# The embedded default is SQLite in var/; PostgreSQL is the production (and test) database.
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'hub.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["ENGINE"] = "portal.sqlite"  # Django's, creating the file's folder when it connects
    # Worker and web share the file: wait for the lock instead of failing at once.
    DATABASES["default"].setdefault("OPTIONS", {}).update({"timeout": 30, "transaction_mode": "IMMEDIATE"})
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Axes first: it refuses a locked-out (account, address) pair before any password is checked. Log-in names are
# compared without regard to case, by username or e-mail (portal.accounts).
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "portal.accounts.EmailOrUsernameBackend"]
# Lockout after repeated failures on the site, the admin and POST /api/v1/tokens/obtain/, keyed by the account AND the
# client address together, so one attacker cannot lock every client behind a shared proxy out of every account.
# Attempts are rows in the database (shared by every web process); staff clear them under "Axes" in the admin or
# with `manage.py axes_reset`; a success or the cool-off ends a lockout.
AXES_FAILURE_LIMIT = env.int("CELLHUB_LOGIN_FAILURE_LIMIT", default=10)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("CELLHUB_LOGIN_LOCKOUT_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_USERNAME_CALLABLE = "portal.accounts.login_name_of"
AXES_LOCKOUT_CALLABLE = "portal.accounts.lockout_response"
AXES_VERBOSE = False

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Made by `collectstatic` (scripts/entrypoint runs it before gunicorn starts); in development WhiteNoise reads
# the finders.
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(VAR_DIR / "staticfiles")))
WHITENOISE_AUTOREFRESH = DEBUG
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/instances/"
LOGOUT_REDIRECT_URL = "/login/"

EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Cell Hub <hub@localhost>")

# Production hardening; `manage.py check --deploy` passes with DEBUG off.
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    # Load balancers and Prometheus probe over plain HTTP inside the network; they must not be sent to https.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_REFERRER_POLICY = "same-origin"

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "portal.api.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "portal.api.pagination.NewestFirst",
    # JSON (bounded: size, depth, NUL) and forms; anything else is a 415 in the error shape.
    "DEFAULT_PARSER_CLASSES": [
        "portal.api.parsers.HubJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "portal.api.errors.api_exception_handler",
    # signup: per account (API) or per address (site form); token_obtain: the password grant, per address.
    "DEFAULT_THROTTLE_RATES": {
        "signup": env.str("CELLHUB_SIGNUP_RATE", default="20/hour"),
        "token_obtain": env.str("CELLHUB_TOKEN_OBTAIN_RATE", default="10/minute"),
    },
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Cell Hub API",
    "DESCRIPTION": (
        "Control plane of the cell-based SaaS: regions, reefs, pools, shares, instances, operations. "
        "Authenticate with `Authorization: Bearer <token>` (tokens: POST /api/v1/tokens/) or a browser session. "
        "Actions that start work answer 202 with the Operation to poll. Every error has the shape "
        '`{"error": {"code", "message", "fields"}}`.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI and Redoc come from drf-spectacular-sidecar's static files: the docs need no internet.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Instance and InstanceDetail share the instance's state set: one named enum, not a guessed one.
    "ENUM_NAME_OVERRIDES": {"InstanceStateEnum": "cells.choices.InstanceState"},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "portal.api.schema.add_error_responses",
    ],
}

# django-q2: the ORM broker by default (nothing to run besides the database); Redis when REDIS_URL is set.
Q_CLUSTER = {
    "name": "cellhub",
    "workers": env.int("Q_WORKERS", default=2),
    # Backups, restores, top-ups and replaces may run for an hour or more; the operation watchdog (with its
    # heartbeat lease) is what notices a dead worker quickly, not this timeout.
    "timeout": env.int("Q_TIMEOUT", default=7200),
    # retry must exceed the longest task so a live task is never delivered twice at once.
    "retry": env.int("Q_RETRY", default=7500),
    "max_attempts": 3,
    "ack_failures": True,
    "catch_up": False,
    "save_limit": 1000,
    "poll": 0.5,
    "label": "Task queue",
}
if env.str("REDIS_URL", default=""):
    Q_CLUSTER["redis"] = env.str("REDIS_URL")
    # Throttle counters must be shared by every web process.
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": env.str("REDIS_URL")}}
else:
    Q_CLUSTER["orm"] = "default"

# The hub's own knobs.
CELLHUB = {
    # Instances answer at <name>.<HUB_DOMAIN>.
    "HUB_DOMAIN": env.str("CELLHUB_DOMAIN", default="cells.localhost"),
    # The hub's own address, for links in the mails it sends staff (empty: links are relative paths).
    "HUB_URL": env.str("CELLHUB_URL", default=""),
    "VAR_DIR": VAR_DIR,
    "DEFAULT_SERVER_VERSION": env.str("CELLHUB_DEFAULT_VERSION", default="2026.4.1"),
    "DEFAULT_IMAGE": env.str("CELLHUB_DEFAULT_IMAGE", default="ghcr.io/cellhub/server"),
    # Every resource the hub creates is named <prefix>-<kind><id>, so ours are told from others'.
    "RESOURCE_PREFIX": env.str("CELLHUB_RESOURCE_PREFIX", default="cellhub"),
    # Instance passwords are derived from this key (HMAC), never stored.
    # Instance database passwords are derived from this key. Production must set its own, apart from SECRET_KEY
    # (a system check refuses to start without it); only DEBUG falls back to SECRET_KEY.
    "CREDENTIAL_KEY": env.str("CELLHUB_CREDENTIAL_KEY", default="") or (SECRET_KEY if DEBUG else ""),
    # DNS provider for every region (local, azure_dns, route53); empty: the region's cloud decides.
    "DNS_PROVIDER": env.str("CELLHUB_DNS_PROVIDER", default=""),
    # Transient driver errors: attempts per step and the backoff between them (seconds, doubling).
    "STEP_ATTEMPTS": env.int("CELLHUB_STEP_ATTEMPTS", default=4),
    "STEP_BACKOFF": env.float("CELLHUB_STEP_BACKOFF", default=1.0),
    "STEP_BACKOFF_MAX": env.float("CELLHUB_STEP_BACKOFF_MAX", default=30.0),
    # Cloud SDK calls: attempts on throttling (429/503, Throttling), backoff base and cap in seconds.
    "CLOUD_ATTEMPTS": env.int("CELLHUB_CLOUD_ATTEMPTS", default=5),
    "CLOUD_BACKOFF": env.float("CELLHUB_CLOUD_BACKOFF", default=0.5),
    "CLOUD_BACKOFF_MAX": env.float("CELLHUB_CLOUD_BACKOFF_MAX", default=20.0),
    "DNS_TTL": env.int("CELLHUB_DNS_TTL", default=300),
    # Backups (issue: backups, restore, decommission). Local drivers encrypt with this Fernet key
    # (cryptography); without it a local backup refuses to run. Clouds use KMS / the provider's keys.
    "BACKUP_KEY": env.str("CELLHUB_BACKUP_KEY", default=""),
    "BACKUP_FULL_EVERY_HOURS": env.int("CELLHUB_BACKUP_FULL_EVERY_HOURS", default=24),
    "BACKUP_RETENTION_DAYS": env.int("CELLHUB_BACKUP_RETENTION_DAYS", default=30),
    # A decommissioned instance's archive is kept this long before it may be purged.
    "ARCHIVE_RETENTION_DAYS": env.int("CELLHUB_ARCHIVE_RETENTION_DAYS", default=90),
    # After a point-in-time restore the replaced database is kept this long unless confirmed earlier.
    "RESTORE_KEEP_OLD_DAYS": env.int("CELLHUB_RESTORE_KEEP_OLD_DAYS", default=7),
    # Local PostgreSQL pools the hub runs (provisioning/drivers/postgres_cluster.py): the ports their clusters
    # (and the temporary ones of point-in-time restores) take, the longest a finished transaction waits before
    # its WAL is archived (the RPO), and how often a base backup of each cluster is taken.
    "POSTGRES_PORTS": env.str("CELLHUB_POSTGRES_PORTS", default="55000-55999"),
    "POSTGRES_ARCHIVE_TIMEOUT": env.int("CELLHUB_POSTGRES_ARCHIVE_TIMEOUT", default=2),
    "BASE_BACKUP_EVERY_HOURS": env.int("CELLHUB_BASE_BACKUP_EVERY_HOURS", default=24),
    # SQLite instances replicate their WAL with Litestream (provisioning/drivers/litestream.py) this often.
    "LITESTREAM_SYNC_SECONDS": env.float("CELLHUB_LITESTREAM_SYNC_SECONDS", default=1.0),
    # API tokens: failed attempts allowed per client address per window before 429.
    "TOKEN_FAILURES_PER_WINDOW": env.int("CELLHUB_TOKEN_FAILURES_PER_WINDOW", default=20),
    "TOKEN_FAILURE_WINDOW_SECONDS": env.int("CELLHUB_TOKEN_FAILURE_WINDOW_SECONDS", default=600),
    # A running operation whose heartbeat is older than this may be taken over (its worker died).
    "OPERATION_LEASE_SECONDS": env.int("CELLHUB_OPERATION_LEASE_SECONDS", default=120),
    # Stuck work (provisioning/watchdog.py): each plan declares how long, in seconds, one attempt of its kind may run
    # and one call of a step may take (provisioning/plans/). Override per kind, or for every kind with "default":
    # CELLHUB_OPERATION_TIME_LIMITS='{"backup": 28800, "queued": 600}', CELLHUB_STEP_TIMEOUTS='{"default": 120}'.
    "OPERATION_TIME_LIMITS": env.json("CELLHUB_OPERATION_TIME_LIMITS", default={}),
    "STEP_TIMEOUTS": env.json("CELLHUB_STEP_TIMEOUTS", default={}),
    # Health checks (provisioning/health.py): an unhealthy running instance is restarted through its compute
    # driver up to HEALTH_RESTART_ATTEMPTS times, waiting HEALTH_RESTART_BACKOFF_SECONDS × 2^(n-1) before the
    # n-th, then flagged for staff. HEALTH_HTTP also asks HEALTH_URL (not for local compute pools).
    "HEALTH_RESTART_ATTEMPTS": env.int("CELLHUB_HEALTH_RESTART_ATTEMPTS", default=3),
    "HEALTH_RESTART_BACKOFF_SECONDS": env.float("CELLHUB_HEALTH_RESTART_BACKOFF_SECONDS", default=300.0),
    "HEALTH_HTTP": env.bool("CELLHUB_HEALTH_HTTP", default=False),
    "HEALTH_URL": env.str("CELLHUB_HEALTH_URL", default="https://{hostname}/api/health"),
    "HEALTH_HTTP_TIMEOUT": env.float("CELLHUB_HEALTH_HTTP_TIMEOUT", default=5.0),
    # How many HTTP health checks the pass runs at once (one thread each, sharing one connection pool).
    "HEALTH_HTTP_CONCURRENCY": env.int("CELLHUB_HEALTH_HTTP_CONCURRENCY", default=32),
    "HEALTH_DRIVER_TIMEOUT": env.float("CELLHUB_HEALTH_DRIVER_TIMEOUT", default=30.0),
    "HEALTH_HISTORY_DAYS": env.int("CELLHUB_HEALTH_HISTORY_DAYS", default=14),
    # An upgrade waits this long for the new version to answer its health check before the try counts as failed.
    "UPGRADE_HEALTH_WAIT_SECONDS": env.float("CELLHUB_UPGRADE_HEALTH_WAIT_SECONDS", default=60.0),
    # Local compute pools: each instance listens on a port of this machine taken from this range ("low-high").
    "LOCAL_PORTS": tuple(int(p) for p in env.str("CELLHUB_LOCAL_PORTS", default="20000-20999").split("-", 1)),
    # /metrics answers only `Authorization: Bearer <token>` when this is set. Without a token it is open while DEBUG
    # is on; in production it answers 403 unless CELLHUB_METRICS_OPEN=1 says it is scraped from a private network.
    "METRICS_TOKEN": env.str("CELLHUB_METRICS_TOKEN", default=""),
    "METRICS_OPEN": env.bool("CELLHUB_METRICS_OPEN", default=DEBUG),
    # Capacity top-ups: overrides only. The defaults live with the code that owns them (cells/thresholds.py
    # explains each key; each driver declares its provider's lead time); a reef overrides them in the admin.
    # CELLHUB_CAPACITY='{"FLOOR": {"storage": 20}, "NEW_POOL_CONFIG": {"aws_rds": {"db_subnet_group": "x"}}}'.
    "CAPACITY": {
        **env.json("CELLHUB_CAPACITY", default={}),
        **{
            key: cast(os.environ[variable])
            for key, variable, cast in (
                ("MARGIN_HOURS", "CELLHUB_CAPACITY_MARGIN_HOURS", float),
                ("SIGNUP_WINDOW_HOURS", "CELLHUB_CAPACITY_SIGNUP_WINDOW_HOURS", float),
                ("MAX_POOLS_PER_PASS", "CELLHUB_CAPACITY_MAX_POOLS_PER_PASS", int),
            )
            if os.environ.get(variable)
        },
    },
}

# Logs: one JSON object per line in production (LOG_FORMAT=json, the default when DEBUG is off), readable text in
# development. Every line written while an operation runs carries its id (provisioning/logs.py).
LOG_FORMAT = env.str("LOG_FORMAT", default="text" if DEBUG else "json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "provisioning.logs.ContextFilter"}},
    "formatters": {
        "json": {"()": "provisioning.logs.JsonFormatter"},
        "text": {"format": "%(asctime)s %(levelname)s %(name)s%(context)s %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["context"],
            "formatter": "json" if LOG_FORMAT == "json" else "text",
        }
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # axes says every successful log-in at INFO; its lockouts are WARNINGs.
    "loggers": {"django.db.backends": {"level": "WARNING"}, "axes": {"level": "WARNING"}},
}
