"""`vendor-node office serve`: configure, migrate, then serve under gunicorn (a production WSGI server).

``--demo`` makes a ready-to-try office: fleet keys beside the database, demo employees (the ids
the simulated unit uses), a manager login printed once per start, and it refuses to bind anything
but loopback (a demo login must never face a network).
"""
from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from ..errors import ConfigError, OfficeError, UsageError
from ..money.sync_transport import is_loopback
from .setup import configure, database_from_url

DEMO_USER = "demo"
DEMO_EMPLOYEES = [(f"E{i:04d}", name, funds) for i, (name, funds) in enumerate(
    [("Ada Lovelace", 2000), ("Grace Hopper", 1500), ("Alan Turing", 1200), ("Edsger Dijkstra", 900),
     ("Barbara Liskov", 2500), ("Ken Thompson", 300), ("Donald Knuth", 1800), ("Frances Allen", 1000),
     ("John Backus", 600), ("Margaret Hamilton", 2200), ("Dennis Ritchie", 1400), ("Radia Perlman", 800)], 1)]


def parse_bind(text: str) -> tuple[str, int]:
    host, sep, port = (text or "").rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--bind {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8000")
    return host, int(port)


def default_keys_dir(db_url: str, demo: bool) -> Path:
    settings_db = database_from_url(db_url)
    if settings_db["ENGINE"].endswith("sqlite3"):  # a demo's keys live beside its database
        beside = Path(settings_db["NAME"]).parent / "fleet-keys"
        if demo or (beside / "fleet_signing.key").is_file():
            return beside
    raise UsageError("--fleet-keys DIR is required (the folder `vendor-node fleet keygen --out DIR` made)")


def prepare(db_url: str, keys_dir: Path | None, demo: bool = False, monitor_token: str = "",
            secure_cookies: bool = False) -> Path:
    """Configure Django, check the fleet keys, migrate. Returns the fleet keys folder."""
    from ..money.keys import FLEET_SIGNING_KEY_FILE, generate_fleet_keys

    keys_dir = Path(keys_dir) if keys_dir else default_keys_dir(db_url, demo)
    if not (keys_dir / FLEET_SIGNING_KEY_FILE).is_file():
        if not demo:
            raise ConfigError(f"{keys_dir}: no {FLEET_SIGNING_KEY_FILE} here (make one with "
                              f"`vendor-node fleet keygen --out {keys_dir}`)")
        generate_fleet_keys(keys_dir)
    configure(db_url, keys_dir, monitor_token=monitor_token, secure_cookies=secure_cookies)
    from django.core.management import call_command
    from django.db import connections
    from django.db.utils import Error as DatabaseError

    try:
        call_command("migrate", interactive=False, verbosity=0)
        ensure_roles()
        from .bundles import signing_key

        signing_key()  # a broken key file is an error now, not at the first unit's sync
    except DatabaseError as exc:
        raise OfficeError(f"database {db_url.split('@')[-1]}: {exc}") from None
    finally:
        connections.close_all()
    return keys_dir


def ensure_roles() -> None:
    from django.contrib.auth.models import Group

    for role in ("manager", "technician"):
        Group.objects.get_or_create(name=role)


def create_demo() -> str:
    """Demo employees (once) and the demo manager's login; returns the new password."""
    from django.contrib.auth.models import Group, User
    from django.db import transaction

    from .ledger import add_employee
    from .models import Employee

    password = secrets.token_urlsafe(9)
    with transaction.atomic():
        user, _ = User.objects.get_or_create(username=DEMO_USER)
        user.set_password(password)
        user.save()
        user.groups.add(Group.objects.get(name="manager"), Group.objects.get(name="technician"))
        for employee_id, name, funds in DEMO_EMPLOYEES:
            if not Employee.objects.filter(employee_id=employee_id).exists():
                add_employee("demo setup", employee_id, name, opening_cents=funds)
    return password


def create_user(username: str, role: str, password: str) -> None:
    from django.contrib.auth.models import Group, User

    from .models import audit

    if role not in ("manager", "technician"):
        raise UsageError(f"--role: must be manager or technician, got {role!r}")
    if len(password) < 10:
        raise UsageError("password: at least 10 characters")
    user, created = User.objects.get_or_create(username=username)
    user.set_password(password)
    user.save()
    user.groups.add(Group.objects.get(name=role))
    audit("command line", "create_user" if created else "set_password", username, role)


UNIT_API_PREFIX = "/api/v1/units/"


def office_application():
    """The office's WSGI application. The unit API's requests (every unit's nightly sync: nearly all of the
    office's load) skip the pages' middleware (sessions, messages, CSRF, login, clickjacking: none applies to
    a request signed by a unit's key and answered with JSON or bundle bytes): same URLs, views, refusals and
    database connection handling, the host still checked against ALLOWED_HOSTS; seven middlewares' calls fewer
    per request (within this machine's noise: `scripts/bench_office.py --in-process [--full-middleware]`).
    Every other URL goes through the full stack."""
    from django.core.handlers.exception import convert_exception_to_response
    from django.core.wsgi import get_wsgi_application
    from django.core.handlers.wsgi import WSGIHandler

    class UnitApiHandler(WSGIHandler):
        def load_middleware(self, is_async=False):
            self._view_middleware, self._template_response_middleware, self._exception_middleware = [], [], []
            self._middleware_chain = convert_exception_to_response(self._unit_request)

        def _unit_request(self, request):
            request.get_host()  # DisallowedHost (400) as CommonMiddleware would raise it for a page
            response = self._get_response(request)
            if not response.streaming and not response.has_header("Content-Length"):
                response.headers["Content-Length"] = str(len(response.content))
            response.headers["X-Content-Type-Options"] = "nosniff"
            return response

    pages, units = get_wsgi_application(), UnitApiHandler()

    def application(environ, start_response):
        handler = units if environ.get("PATH_INFO", "").startswith(UNIT_API_PREFIX) else pages
        return handler(environ, start_response)

    return application


def run_gunicorn(host: str, port: int, workers: int, threads: int) -> None:
    """``threads`` 1: gunicorn's sync worker, one request at a time per process (the production unit's choice:
    no request's open transaction waits while another thread of its process holds the GIL, and no thread
    pool's accept loop per request); more: the gthread worker. A sync worker is held by a slow client for as
    long as it sends: behind the TLS proxy, which buffers requests (README "Office")."""
    from gunicorn.app.base import BaseApplication

    application = office_application()

    class OfficeServer(BaseApplication):
        def load_config(self):
            bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            access = None if os.environ.get("VENDOR_NODE_OFFICE_ACCESS_LOG") == "0" else "-"  # benches: off
            for key, value in {"bind": bind, "workers": workers, "threads": threads, "timeout": 60,
                               "worker_class": "sync" if threads == 1 else "gthread",
                               "accesslog": access, "graceful_timeout": 10, "limit_request_line": 8190}.items():
                self.cfg.set(key, value)

        def load(self):
            return application

    OfficeServer().run()


def serve(args) -> int:
    host, port = parse_bind(args.bind)
    if args.demo and not is_loopback(host):
        raise UsageError(f"--demo binds loopback only (127.0.0.1, ::1 or localhost), not {host!r}: "
                         "a demo login must never face a network")
    token = os.environ.get("VENDOR_NODE_OFFICE_MONITOR_TOKEN", "")
    keys_dir = prepare(args.db, args.fleet_keys, demo=args.demo, monitor_token=token,
                       secure_cookies=getattr(args, "behind_tls", False))
    if args.demo:
        password = create_demo()
        from django.db import connections

        connections.close_all()
        print(f"demo office: http://{host}:{port}/  log in as {DEMO_USER} / {password}", flush=True)
    print(f"office serving on {host}:{port}, database {args.db.split('@')[-1]}, fleet keys {keys_dir}",
          flush=True)
    sys.stdout.flush()
    run_gunicorn(host, port, args.workers, args.threads)
    return 0
