"""Shared plumbing for the benchmark scripts: Django set-up, the table, the JSON."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent


def setup_django(database_url: str | None = None) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "quanthub.settings")
    os.environ.setdefault("LOG_LEVEL", "error")
    if database_url is not None:
        os.environ["DATABASE_URL"] = database_url
    import django

    django.setup()


def as_deployed(env: dict[str, str]) -> dict[str, str]:
    """A child's environment as production runs: DEBUG off (with it on, Django's debug
    cursor records every statement, and the system checks refuse the Dhan broker),
    with keys of the run's own: nothing it signs outlives the run."""
    import secrets

    env = {
        **env,
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "AUDIT_HMAC_KEY": secrets.token_urlsafe(32),
    }
    for name in ("SECRET_KEY_FILE", "AUDIT_HMAC_KEY_FILE"):
        env.pop(name, None)
    return env


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", metavar="PATH", help="Also write {'benchmark': name, 'metrics': {...}} to PATH.")
    return p


def _shown(value) -> str:
    if isinstance(value, str):
        return value[:16]  # a hash: its first 16 characters in the table, all of it in the JSON
    return f"{value:,.3f}" if isinstance(value, float) else f"{value:,}"


def report(name: str, metrics: dict[str, float], json_path: str | None) -> None:
    width = max(len(k) for k in metrics)
    print(f"{name}")
    print("-" * (width + 16))
    for key, value in metrics.items():
        shown = _shown(value)
        print(f"{key:<{width}}  {shown:>12}")
    if json_path:
        Path(json_path).write_text(json.dumps({"benchmark": name, "metrics": metrics}, indent=2) + "\n")
        print(f"\nwrote {json_path}")


@contextlib.contextmanager
def fresh_postgres(url: str):
    """A new, empty database on the server of ``url`` for one run, dropped after it, so
    what the run measures (a session's books, its decision hash) holds none of an earlier
    run's rows; the database ``url`` names is left as it is."""
    import psycopg

    parts = urlsplit(url)
    name = f"{parts.path.lstrip('/') or 'quanthub'}_bench_{os.getpid()}"
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
