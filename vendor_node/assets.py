"""Which model folders the firmware ships: ``firmware_assets/models.json`` names the active and the accepted ones.

Why two lists: a unit in the field holds templates made by the model it had when each employee enrolled.
``active`` is the model new templates are made with; ``accepted`` are older models whose templates are still
matched (and refreshed to the active model on a confident match) until nobody uses them, so a model change
never locks anyone out. Each model lives in its own folder with its ``manifest.json`` (hand/model.py).

``unit.assets_dir`` names ``firmware_assets/``; a model folder itself (holding a ``manifest.json``) is also
accepted wherever an assets folder is, as the one active model with nothing else accepted.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError

MODELS_NAME = "models.json"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class ModelSet:
    """The active model's folder and the folders of the older models still matched, active first in ``all``."""

    active: Path
    accepted: tuple[Path, ...] = ()

    @property
    def all(self) -> tuple[Path, ...]:
        return (self.active,) + self.accepted


def model_set(assets_dir: Path | str) -> ModelSet:
    """The folders named by ``models.json``; ModelError naming the file and what is wrong."""
    assets_dir = Path(assets_dir)
    path = assets_dir / MODELS_NAME
    if not path.is_file():
        if (assets_dir / MANIFEST_NAME).is_file():
            return ModelSet(assets_dir)
        raise ModelError(f"{assets_dir / MANIFEST_NAME}: model manifest not found (nor a {MODELS_NAME} naming model folders)")
    try:
        listing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: cannot read the model list: {exc}") from None
    if not isinstance(listing, dict) or set(listing) - {"active", "accepted"}:
        raise ModelError(f"{path}: expected {{\"active\": NAME, \"accepted\": [NAME, ...]}}, got {listing!r}")
    active, accepted = listing.get("active"), listing.get("accepted", [])
    if not isinstance(accepted, list):
        raise ModelError(f"{path}: accepted: expected a list of model folder names, got {accepted!r}")
    folders = []
    for key, name in [("active", active)] + [(f"accepted[{i}]", n) for i, n in enumerate(accepted)]:
        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            raise ModelError(f"{path}: {key}: expected a model folder name, got {name!r}")
        folder = assets_dir / name
        if not (folder / MANIFEST_NAME).is_file():
            raise ModelError(f"{path}: {key}: no {MANIFEST_NAME} in {folder}")
        if folder in folders:
            raise ModelError(f"{path}: {key}: {name!r} is listed twice")
        folders.append(folder)
    return ModelSet(folders[0], tuple(folders[1:]))


def active_manifest_path(assets_dir: Path | str) -> Path:
    """The active model's ``manifest.json`` (what the unit's version, sync heartbeat and eval exclusions read)."""
    return model_set(assets_dir).active / MANIFEST_NAME
