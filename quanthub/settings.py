"""Quant Hub settings: one module, configured only by the environment.

With nothing set this is the embedded default: SQLite under ``var/``, the
in-memory channel layer, in-process periodic jobs, the market simulator and
the paper broker. Production sets ``DATABASE_URL``, ``REDIS_URL``,
``QUANTHUB_BROKER`` and friends; see the configuration table in README.md.
"""

from __future__ import annotations

import os
import secrets
import sys
from decimal import Decimal
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from quanthub.env import env_bool, env_choice, env_decimal, env_int, env_list, env_secret, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("QUANTHUB_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def _local_secret(filename: str) -> str:
    """A random secret kept in ``var/`` for the embedded default only."""
    path = VAR_DIR / filename
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48), encoding="utf-8")
        path.chmod(0o600)
    return path.read_text(encoding="utf-8").strip()


DEBUG = env_bool("DEBUG", True)
TESTING = env_bool("QUANTHUB_TESTING", "pytest" in sys.modules)

SECRET_KEY = env_secret("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = _local_secret("secret_key")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] + (["testserver"] if DEBUG else []))
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    "django_htmx",
    "template_partials",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "django_celery_beat",
    "axes",
    "quanthub.apps.QuantHubConfig",
    "marketdata",
    "trading",
    "risk",
    "audit",
]

MIDDLEWARE = [
    "quanthub.metrics.middleware",
    "django.middleware.security.SecurityMiddleware",
    "quanthub.security.SecurityHeadersMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "quanthub.urls"
WSGI_APPLICATION = "quanthub.wsgi.application"
ASGI_APPLICATION = "quanthub.asgi.application"

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
                "quanthub.context_processors.roles",
                "quanthub.context_processors.ui_permissions",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'quanthub.sqlite3'}")
try:
    _db = dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0, minimum=0))
except (ValueError, KeyError) as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a usable database URL: {exc}") from None
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the dashboards read while the engine writes; IMMEDIATE takes the
    # write lock at BEGIN so two writers queue instead of failing mid-transaction.
    _db["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    if TESTING:
        # The test database is a file, as deployed, not Django's shared in-memory one:
        # there a table another thread is reading fails a write at once ("database table
        # is locked", with no busy wait), so the engine's thread and a request's could
        # not run side by side as they do in production. One file per process: two
        # runs on one machine never share one.
        _db["TEST"] = {"NAME": str(VAR_DIR / f"test_quanthub_{os.getpid()}.sqlite3")}
elif _db["ENGINE"] != "django.db.backends.postgresql":
    raise ImproperlyConfigured("DATABASE_URL must be a sqlite:// or postgres:// URL")
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
IS_POSTGRES = _db["ENGINE"] == "django.db.backends.postgresql"

# --- Redis, channel layer, Celery ----------------------------------------------
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL and not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured("REDIS_URL must start with redis://, rediss:// or unix://")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "capacity": 1500, "expiry": 10},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# The Celery queue may live on a Redis of its own with AOF on (docker/compose.yaml), so a
# Redis restart loses no queued task; the channel layer's Redis may stay ephemeral.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = not REDIS_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TIMEZONE = "Asia/Kolkata"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1

# --- Trading --------------------------------------------------------------------
QUANTHUB_BROKER = env_choice("QUANTHUB_BROKER", ("paper", "dhan"), "paper")
QUANTHUB_FEED = env_choice("QUANTHUB_FEED", ("sim", "replay", "dhan"), "sim")
QUANTHUB_SEED = env_int("QUANTHUB_SEED", 7)
QUANTHUB_ACCOUNT = env_str("QUANTHUB_ACCOUNT", "default")
QUANTHUB_PAPER_CAPITAL = env_str("QUANTHUB_PAPER_CAPITAL", "2500000")
# An order the broker does not list (yet) by its correlation id stays pending this
# long (engine-clock seconds) before it is called NOT_AT_BROKER; reconciliation
# still adopts it, with its fills, if it shows up later. Dhan lists within seconds.
QUANTHUB_NOT_FOUND_GRACE_S = env_int("QUANTHUB_NOT_FOUND_GRACE_S", 60, minimum=1, maximum=3600)
# The same for exits and Kill All legs: a way out is re-sent after this, not after a
# minute. The window starts when the outcome became unknown, that is after the send's
# own timeout (DHAN_HTTP_TIMEOUT_S) when that is what failed, so a request Dhan read
# has had both to be listed. One that is listed later still is adopted by
# reconciliation, and the flatten, which works to the broker's position, closes the
# over-sell: a late listing costs a round trip, a long window costs the whole flatten.
QUANTHUB_EXIT_NOT_FOUND_GRACE_S = float(
    env_decimal("QUANTHUB_EXIT_NOT_FOUND_GRACE_S", Decimal(1), minimum=Decimal("0.5"), maximum=Decimal(3600))
)
# With every reconciliation break cleared, return a reconciliation halt to ACTIVE
# without waiting for a risk manager (off: the risk panel's Resume does it).
QUANTHUB_RECONCILE_AUTO_RESUME = env_bool("QUANTHUB_RECONCILE_AUTO_RESUME", False)
# Failures injected around the paper broker (fault benchmark, storm tests): see trading/brokers/faults.py.
QUANTHUB_BROKER_FAULTS = env_str("QUANTHUB_BROKER_FAULTS", "")
QUANTHUB_BROKER_FAULTS_LOG = env_str("QUANTHUB_BROKER_FAULTS_LOG", "")
DHAN_CLIENT_ID = env_secret("DHAN_CLIENT_ID")
DHAN_ACCESS_TOKEN = env_secret("DHAN_ACCESS_TOKEN")
DHAN_TOTP_SECRET = env_secret("DHAN_TOTP_SECRET")
DHAN_PIN = env_secret("DHAN_PIN")
DHAN_HTTP_TIMEOUT_S = env_int("DHAN_HTTP_TIMEOUT_S", 3, minimum=1, maximum=60)
# Where Dhan is reached: its production endpoints unless pointed elsewhere (a sandbox,
# or local servers speaking its protocol in tests and rehearsals).
DHAN_API_BASE_URL = env_str("DHAN_API_BASE_URL", "https://api.dhan.co/v2")
DHAN_AUTH_BASE_URL = env_str("DHAN_AUTH_BASE_URL", "https://auth.dhan.co")
DHAN_ORDER_UPDATE_URL = env_str("DHAN_ORDER_UPDATE_URL", "wss://api-order-update.dhan.co")
DHAN_MARKET_FEED_URL = env_str("DHAN_MARKET_FEED_URL", "wss://api-feed.dhan.co")
# A stream that sends nothing (no frame, no pong) for this long is closed and reconnected.
DHAN_STREAM_SILENCE_S = env_int("DHAN_STREAM_SILENCE_S", 10, minimum=1, maximum=120)
# The broker-side P&L exit sits this many rupees beyond our daily loss cap, so ours fires first.
DHAN_PNL_EXIT_BUFFER = env_decimal("DHAN_PNL_EXIT_BUFFER", Decimal("2000"))
# How long a margin-calculator answer for the same basket is reused.
DHAN_MARGIN_CACHE_S = env_int("DHAN_MARGIN_CACHE_S", 5, minimum=0, maximum=300)
# Where a refreshed access token is kept (mode 600): the file DHAN_ACCESS_TOKEN_FILE
# names, else var/dhan/access_token. Never the database.
DHAN_TOKEN_PATH = env_str("DHAN_ACCESS_TOKEN_FILE", str(VAR_DIR / "dhan" / "access_token"))

# The audit HMAC key never lives in the database. Production must set it (a
# system check enforces that); the embedded default keeps a random one in var/.
AUDIT_HMAC_KEY = env_secret("AUDIT_HMAC_KEY")
AUDIT_HMAC_KEY_IS_LOCAL = not AUDIT_HMAC_KEY
if not AUDIT_HMAC_KEY and DEBUG:
    AUDIT_HMAC_KEY = _local_secret("audit_hmac_key")
# Signed checkpoints of the chain, outside the database (audit.checkpoints): a
# directory the database's superuser cannot write, every N records and at the close.
AUDIT_CHECKPOINT_DIR = Path(env_str("AUDIT_CHECKPOINT_DIR", str(VAR_DIR / "audit")))
AUDIT_CHECKPOINT_EVERY = env_int("AUDIT_CHECKPOINT_EVERY", 1000, minimum=1)
AUDIT_CHECKPOINT_TO_SINKS = env_bool("AUDIT_CHECKPOINT_TO_SINKS", True)
# Processes verify_audit splits the chain across (default: every core).
AUDIT_VERIFY_WORKERS = env_int("AUDIT_VERIFY_WORKERS", os.cpu_count() or 1, minimum=1, maximum=64)
# Below this many records one process verifies (a pool costs more than it saves).
AUDIT_VERIFY_PARALLEL_MIN = env_int("AUDIT_VERIFY_PARALLEL_MIN", 20_000, minimum=2)

# Strategy registry: key -> dotted path of the Strategy class, imported lazily.
QUANTHUB_STRATEGIES = {
    "vol_oi": "trading.strategies.vol_oi.strategy.VolOiStrategy",
}

# Bearer token a Prometheus scraper sends to /health/metrics; unset: no metrics endpoint.
METRICS_TOKEN = env_secret("METRICS_TOKEN")
# The engine's own metrics endpoint (run_engine --metrics-port); unset: not served.
ENGINE_METRICS_PORT = env_int("ENGINE_METRICS_PORT", 0, minimum=0, maximum=65535) or None
ENGINE_METRICS_HOST = env_str("ENGINE_METRICS_HOST", "127.0.0.1")

# --- Alerts -----------------------------------------------------------------------
SLACK_WEBHOOK_URL = env_secret("SLACK_WEBHOOK_URL")
TELEGRAM_BOT_TOKEN = env_secret("TELEGRAM_BOT_TOKEN")
TELEGRAM_CHAT_ID = env_str("TELEGRAM_CHAT_ID")
# PagerDuty Events API v2 integration key: CRITICAL alerts page on-call.
PAGERDUTY_ROUTING_KEY = env_secret("PAGERDUTY_ROUTING_KEY")
PAGERDUTY_EVENTS_URL = env_str("PAGERDUTY_EVENTS_URL", "https://events.pagerduty.com/v2/enqueue")
if TESTING:
    # Tests never reach the network: a developer's exported webhook or bot token
    # must not turn a test's alert into a real message (tests set their own).
    SLACK_WEBHOOK_URL = TELEGRAM_BOT_TOKEN = PAGERDUTY_ROUTING_KEY = ""
# Only for tests and for a self-hosted Bot API server; the token is appended to it.
TELEGRAM_API_BASE = env_str("TELEGRAM_API_BASE", "https://api.telegram.org")
# Alerts below this level stay in the app; at or above it they also go to the sinks.
ALERT_SINK_MIN_LEVEL = env_choice("ALERT_SINK_MIN_LEVEL", ("info", "warning", "critical"), "warning").upper()
ALERT_SINK_TIMEOUT_S = env_int("ALERT_SINK_TIMEOUT_S", 5, minimum=1, maximum=60)
# Seconds to wait before each retry of a failed delivery (so 1 + len attempts in all).
ALERT_SINK_RETRY_DELAYS = (0.5, 2.0, 5.0)
# Sink name -> dotted path of its class, imported lazily (trading/sinks/).
ALERT_SINKS = {
    "slack": "trading.sinks.slack.SlackSink",
    "telegram": "trading.sinks.telegram.TelegramSink",
    "pagerduty": "trading.sinks.pagerduty.PagerDutySink",
}

# --- Auth, sessions, security --------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = env_int("AXES_COOLOFF_MINUTES", 15, minimum=1) / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_ENABLED = env_bool("AXES_ENABLED", True)

if TESTING:
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

SECURE_HTTPS = env_bool("SECURE_HTTPS", not DEBUG)
SESSION_COOKIE_SECURE = SECURE_HTTPS
CSRF_COOKIE_SECURE = SECURE_HTTPS
SECURE_SSL_REDIRECT = SECURE_HTTPS and env_bool("SECURE_SSL_REDIRECT", True)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if SECURE_HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HTTPS
SECURE_HSTS_PRELOAD = SECURE_HTTPS
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_PROXY", False) else None
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"

# --- I18N, time ------------------------------------------------------------------------
LANGUAGE_CODE = "en-in"
TIME_ZONE = "Asia/Kolkata"
USE_I18N = True
USE_TZ = True

# --- Static files ----------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG or TESTING
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG or TESTING
ARTIFACTS_DIR = BASE_DIR / "artifacts"

# --- Anomaly models and backups (docs/operations.md) --------------------------------
# Nightly Isolation Forest: artefacts under this directory, trained on the last N sessions.
QUANTHUB_ANOMALY_DIR = env_str("QUANTHUB_ANOMALY_DIR", str(VAR_DIR / "anomaly"))
QUANTHUB_ANOMALY_SESSIONS = env_int("QUANTHUB_ANOMALY_SESSIONS", 5, minimum=1, maximum=30)
QUANTHUB_ANOMALY_CONTAMINATION = float(env_str("QUANTHUB_ANOMALY_CONTAMINATION", "0.001"))
# Backups: a timestamped, checksummed file per run in this directory, the newest N kept;
# also uploaded to S3-compatible storage when a bucket is named (credentials: boto3's usual
# AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or their _FILE variants read here).
QUANTHUB_BACKUP_DIR = env_str("QUANTHUB_BACKUP_DIR", str(VAR_DIR / "backups"))
QUANTHUB_BACKUP_KEEP = env_int("QUANTHUB_BACKUP_KEEP", 14, minimum=1, maximum=1000)
QUANTHUB_BACKUP_S3_BUCKET = env_str("QUANTHUB_BACKUP_S3_BUCKET")
QUANTHUB_BACKUP_S3_PREFIX = env_str("QUANTHUB_BACKUP_S3_PREFIX", "quanthub/")
QUANTHUB_BACKUP_S3_ENDPOINT = env_str("QUANTHUB_BACKUP_S3_ENDPOINT")
QUANTHUB_BACKUP_S3_REGION = env_str("QUANTHUB_BACKUP_S3_REGION", "ap-south-1")
QUANTHUB_BACKUP_S3_ACCESS_KEY = env_secret("AWS_ACCESS_KEY_ID")
QUANTHUB_BACKUP_S3_SECRET_KEY = env_secret("AWS_SECRET_ACCESS_KEY")

# --- REST API ----------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.UserRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"user": env_str("API_THROTTLE_RATE", "600/min")},
    "EXCEPTION_HANDLER": "quanthub.api.json_exception_handler",
}
# /health/ready: the engine's heartbeat must be younger than this (it beats every second).
HEALTH_ENGINE_STALE_S = env_int("HEALTH_ENGINE_STALE_S", 10, minimum=1)
# Health probes come over plain HTTP from inside the container, never redirected.
SECURE_REDIRECT_EXEMPT = [r"^health/"]
SPECTACULAR_SETTINGS = {
    "TITLE": "Quant Hub API",
    "DESCRIPTION": "Positions, orders, risk limits, trading state, Kill All, audit export and health.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "quanthub.api.document_errors",
    ],
}

# --- Logging -----------------------------------------------------------------------------
LOG_LEVEL = env_choice("LOG_LEVEL", ("debug", "info", "warning", "error"), "info").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "quanthub.logging.JsonFormatter"}},
    "filters": {"expected": {"()": "quanthub.logging.ExpectedRefusals"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["expected"]}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's default config gives these plain-text handlers of their own (with
        # DEBUG on); without handlers they log once, as JSON, through the root.
        "django": {"handlers": [], "level": LOG_LEVEL, "propagate": True},
        "django.server": {"handlers": [], "level": "WARNING", "propagate": True},
        "py.warnings": {"handlers": [], "level": "WARNING", "propagate": True},
        "daphne": {"level": "WARNING"},
        "asyncio": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
        "axes": {"level": "WARNING"},
    },
}
