"""Which model folders the firmware ships: ``firmware_assets/models.json`` names the active and the accepted ones.

Why two lists: a unit in the field holds templates made by the model it had when each employee enrolled.
``active`` is the model new templates are made with; ``accepted`` are older models whose templates are still
matched (and refreshed to the active model on a confident match) until nobody uses them, so a model change
never locks anyone out. Each model lives in its own folder with its ``manifest.json`` (hand/model.py).

``shortlist`` (optional, ``{"model": NAME, "keep": K, "full_search_when_unknown": true}``): a fast learned
embedding that only ranks the gallery, keeping the K best candidates for the active palm-code model to score
and decide (hand/cascade.py; when none of them reaches the threshold the palm codes search everyone, unless
``full_search_when_unknown`` is false). It never decides (a stranger is accepted only when the palm codes
accept) unless ``"decide": "fused"``: then the shortlisted candidates are decided on the fused score of both
models, by the ``fusion`` block of the shortlist model's manifest (hand/fusion.py); default ``"palm_code"``.

``landmarks`` (optional, a folder name): the hand-landmark model that places the palm square before the classical
path is tried (hand/palm_finder.py); not a matching model, so not in ``all``.

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
    shortlist: Path | None = None  # the embedding that shortlists for the active model (None: no cascade)
    shortlist_keep: int = 0  # candidates the shortlist keeps (K)
    full_search_when_unknown: bool = True  # no shortlisted candidate passed: the palm codes search everyone
    fused: bool = False  # shortlist.decide = "fused": both models' fused score decides (hand/fusion.py)
    landmarks: Path | None = None  # the hand-landmark model placing the palm square (hand/landmarks.py), if any

    @property
    def all(self) -> tuple[Path, ...]:
        """Every model folder to load: active, accepted, then the shortlist model (if any)."""
        return (self.active,) + self.accepted + ((self.shortlist,) if self.shortlist else ())


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
    if not isinstance(listing, dict) or set(listing) - {"active", "accepted", "shortlist", "landmarks"}:
        raise ModelError(f"{path}: expected {{\"active\": NAME, \"accepted\": [NAME, ...], \"shortlist\": "
                         f"{{\"model\": NAME, \"keep\": K}}, \"landmarks\": NAME}}, got {listing!r}")
    active, accepted = listing.get("active"), listing.get("accepted", [])
    if not isinstance(accepted, list):
        raise ModelError(f"{path}: accepted: expected a list of model folder names, got {accepted!r}")
    named = [("active", active)] + [(f"accepted[{i}]", n) for i, n in enumerate(accepted)]
    keep = _shortlist_keep(path, listing.get("shortlist"))
    if keep:
        named.append(("shortlist.model", listing["shortlist"]["model"]))
    folders = []
    for key, name in named:
        folder = _named_folder(path, assets_dir, key, name)
        if folder in folders:
            raise ModelError(f"{path}: {key}: {name!r} is listed twice")
        folders.append(folder)
    landmarks = _landmark_folder(path, assets_dir, listing.get("landmarks"), folders)
    if keep:
        kinds = [_kind(folder) for folder in (folders[0], folders[-1])]
        if kinds != ["palm_code", "embedding"]:
            raise ModelError(f"{path}: shortlist: an embedding model ({folders[-1].name} is {kinds[1]}) shortlists "
                             f"for a palm-code active model ({folders[0].name} is {kinds[0]})")
        return ModelSet(folders[0], tuple(folders[1:-1]), folders[-1], keep,
                        listing["shortlist"].get("full_search_when_unknown", True),
                        listing["shortlist"].get("decide", "palm_code") == "fused", landmarks)
    return ModelSet(folders[0], tuple(folders[1:]), landmarks=landmarks)


def _named_folder(path: Path, assets_dir: Path, key: str, name) -> Path:
    """The model folder ``models.json`` names under ``key``; ModelError naming the key when it is not one."""
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise ModelError(f"{path}: {key}: expected a model folder name, got {name!r}")
    folder = assets_dir / name
    if not (folder / MANIFEST_NAME).is_file():
        raise ModelError(f"{path}: {key}: no {MANIFEST_NAME} in {folder}")
    return folder


def _landmark_folder(path: Path, assets_dir: Path, name, matching: list[Path]) -> Path | None:
    """The ``landmarks`` folder (None when absent); ModelError naming the key when it is not a landmark folder."""
    if name is None:
        return None
    folder = _named_folder(path, assets_dir, "landmarks", name)
    if folder in matching:
        raise ModelError(f"{path}: landmarks: {name!r} is a matching model, not a landmark model")
    return folder


def _kind(folder: Path) -> str:
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{folder / MANIFEST_NAME}: cannot read the model manifest: {exc}") from None
    return manifest.get("kind", "palm_code") if isinstance(manifest, dict) else "unreadable"


MAX_SHORTLIST_KEEP = 5000  # beyond this the palm codes search most of any real gallery: no cascade left


def _shortlist_keep(path: Path, shortlist) -> int:
    """K of the ``shortlist`` entry (0 when absent); ModelError naming the key path when malformed."""
    if shortlist is None:
        return 0
    keys = {"model", "keep", "full_search_when_unknown", "decide"}
    if not isinstance(shortlist, dict) or not {"model", "keep"} <= set(shortlist) <= keys:
        unknown = sorted(set(shortlist) - keys) if isinstance(shortlist, dict) else None
        what = f"unknown key(s) {unknown}" if unknown else f"got {shortlist!r}"
        raise ModelError(f"{path}: shortlist: expected {{\"model\": NAME, \"keep\": K, "
                         f"\"full_search_when_unknown\": true|false, \"decide\": \"palm_code\"|\"fused\" "
                         f"(both optional)}}, {what}")
    if not isinstance(shortlist.get("full_search_when_unknown", True), bool):
        raise ModelError(f"{path}: shortlist.full_search_when_unknown: expected true or false, "
                         f"got {shortlist['full_search_when_unknown']!r}")
    if shortlist.get("decide", "palm_code") not in ("palm_code", "fused"):
        raise ModelError(f"{path}: shortlist.decide: expected \"palm_code\" or \"fused\", got {shortlist['decide']!r}")
    keep = shortlist["keep"]
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= MAX_SHORTLIST_KEEP:
        raise ModelError(f"{path}: shortlist.keep: expected a whole number of candidates from 1 to "
                         f"{MAX_SHORTLIST_KEEP}, got {keep!r}")
    return keep


def active_manifest_path(assets_dir: Path | str) -> Path:
    """The active model's ``manifest.json`` (what the unit's version, sync heartbeat and eval exclusions read)."""
    return model_set(assets_dir).active / MANIFEST_NAME
