"""Django settings built in code from `office serve --db URL`: no settings module to edit or leak.

The secret key and the fleet signing key live in the fleet keys folder (0600 files); the database
URL picks SQLite (``sqlite:///PATH``) or PostgreSQL (``postgresql://user:pass@host:port/db``).
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from ..errors import ConfigError

SECRET_KEY_FILE = "office_secret.key"


def database_from_url(url: str) -> dict:
    """Django's DATABASES['default'] for a ``sqlite:///PATH`` or ``postgresql://...`` URL; ConfigError otherwise."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
            raise ConfigError(f"--db {url!r}: expected sqlite:///PATH (relative) or sqlite:////ABSOLUTE/PATH")
        db_path = Path(unquote(url[len("sqlite:///"):].split("?", 1)[0])).absolute()
        if not db_path.parent.is_dir():
            raise ConfigError(f"--db {url!r}: folder {db_path.parent} does not exist")
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": str(db_path),
                "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE",  # secure_delete: deleted rows zeroed
                            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; "
                                            "PRAGMA secure_delete=ON;"}}
    if parsed.scheme in ("postgresql", "postgres"):
        name = unquote(parsed.path.lstrip("/"))
        if not name:
            raise ConfigError(f"--db {url!r}: name the database, e.g. postgresql://user@host:5432/office")
        try:
            port = parsed.port
        except ValueError:
            raise ConfigError(f"--db {url!r}: the port is not a number") from None
        options = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        return {"ENGINE": "django.db.backends.postgresql", "NAME": name,
                "USER": unquote(parsed.username or ""), "PASSWORD": unquote(parsed.password or ""),
                "HOST": parsed.hostname or "", "PORT": str(port or ""), "OPTIONS": options,
                "CONN_MAX_AGE": 60, "CONN_HEALTH_CHECKS": True}
    raise ConfigError(f"--db {url!r}: expected sqlite:///PATH or postgresql://user@host:port/name")


def ensure_secret_key(keys_dir: Path) -> str:
    """The session-signing secret, created once (0600) beside the fleet keys."""
    path = Path(keys_dir) / SECRET_KEY_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"{path}: permissions too open for the office secret; chmod 600 {path}")
    return path.read_text().strip()


def configure(db_url: str, keys_dir: Path, *, debug: bool = False, allowed_hosts=("*",),
              monitor_token: str = "", secure_cookies: bool = False) -> None:
    """Configure Django once for this process (settings.configure + setup)."""
    import django
    from django.conf import settings

    if settings.configured:
        if getattr(settings, "VENDOR_NODE_PLACEHOLDER", False):
            raise ConfigError("the office's modules were imported before `office serve` configured it "
                              "(import vendor_node.office.server and call prepare() first)")
        return
    keys_dir = Path(keys_dir)
    settings.configure(
        DEBUG=debug,
        SECRET_KEY=ensure_secret_key(keys_dir),
        ALLOWED_HOSTS=list(allowed_hosts),
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions",
                        "django.contrib.messages", "vendor_node.office"],
        MIDDLEWARE=["django.middleware.security.SecurityMiddleware",
                    "django.contrib.sessions.middleware.SessionMiddleware",
                    "django.middleware.common.CommonMiddleware",
                    "django.middleware.csrf.CsrfViewMiddleware",
                    "django.contrib.auth.middleware.AuthenticationMiddleware",
                    "django.contrib.messages.middleware.MessageMiddleware",
                    "django.middleware.clickjacking.XFrameOptionsMiddleware"],
        ROOT_URLCONF="vendor_node.office.urls",
        DATABASES={"default": database_from_url(db_url)},
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True,
                    "OPTIONS": {"context_processors": ["django.template.context_processors.request",
                                                       "django.contrib.auth.context_processors.auth",
                                                       "django.contrib.messages.context_processors.messages"]}}],
        LOGIN_URL="/login/", LOGIN_REDIRECT_URL="/", LOGOUT_REDIRECT_URL="/login/",
        USE_TZ=True, TIME_ZONE="UTC",
        SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SECURE=secure_cookies, CSRF_COOKIE_SECURE=secure_cookies,
        SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https") if secure_cookies else None,
        SECURE_HSTS_SECONDS=31536000 if secure_cookies else 0,
        SECURE_REFERRER_POLICY="same-origin", X_FRAME_OPTIONS="DENY",
        DATA_UPLOAD_MAX_MEMORY_SIZE=40 * 1024 * 1024,
        VENDOR_NODE_KEYS_DIR=str(keys_dir),
        VENDOR_NODE_MONITOR_TOKEN=monitor_token,
        LOGGING_CONFIG=None,
    )
    django.setup()


def importable() -> None:
    """Let an office module be imported on its own (the package's import test walks every module):
    without a configuration, Django gets a placeholder with no database, which fails loudly on use."""
    import django
    from django.conf import settings

    if settings.configured:
        return
    settings.configure(INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes",
                                       "django.contrib.sessions", "django.contrib.messages", "vendor_node.office"],
                       DATABASES={}, VENDOR_NODE_PLACEHOLDER=True, VENDOR_NODE_KEYS_DIR="",
                       VENDOR_NODE_MONITOR_TOKEN="", USE_TZ=True)
    django.setup()
