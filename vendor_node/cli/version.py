"""`vendor-node --version`: the package version, the model's id and the account bundle's version.

Why all three: a unit's behaviour is the code, the model it runs and the accounts it holds; a
technician on the phone reads out one line per part. Nothing here writes: the unit database is
opened read-only, and a missing config, model or database is printed as such, never an error.
"""
from __future__ import annotations

import datetime
import json
import sqlite3
from pathlib import Path

import vendor_node


def version_text(config_path: Path | str | None = None) -> str:
    lines = [f"vendor-node {vendor_node.__version__}"]
    try:
        from ..config import load_config

        cfg = load_config(config_path)
    except Exception as exc:  # the version must print even on a unit whose config is broken
        return "\n".join(lines + [f"model unknown, bundle unknown: config: {exc}"])
    lines.append(f"model {model_id(cfg.unit.assets_dir)}")
    lines.append(f"bundle {bundle_version(cfg.state_dir)}")
    return "\n".join(lines)


def model_id(assets_dir: Path | str) -> str:
    """``<model id> <model file> sha256 <first 16 hex>`` from the active model's manifest (models.json)."""
    from ..assets import active_manifest_path
    from ..errors import ModelError

    try:
        path = active_manifest_path(assets_dir)
    except ModelError as exc:
        return f"unknown ({exc})"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        return f"{manifest.get('model_id', path.parent.name)} {manifest['model_file']} sha256 {str(manifest['sha256'])[:16]}"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unknown ({path}: {type(exc).__name__}: {exc})"


def bundle_version(state_dir: Path | str) -> str:
    """The newest applied bundle's version, kind and creation date, read without creating anything."""
    from ..money.storage import DB_NAME

    db_path = Path(state_dir) / DB_NAME
    if not db_path.is_file():
        return f"none (no unit database in {state_dir})"
    try:
        conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=2.0)
        try:
            row = conn.execute("SELECT version, kind, created FROM bundle_history "
                               "ORDER BY version DESC LIMIT 1").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"unknown ({db_path}: {exc})"
    if row is None:
        return "none imported"
    created = datetime.datetime.fromtimestamp(row[2]).strftime("%Y-%m-%d %H:%M")
    return f"v{row[0]} ({row[1]}, created {created})"
