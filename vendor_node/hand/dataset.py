"""Photo folders for `vendor-node eval` and training: samples grouped by person, read from a manifest or the layout.

A folder is ``<subject>/<image>``, or has a ``manifest.csv`` (path, subject, extra, captured, session: capture
sessions, e.g. two months apart; eval enrolls from the first and probes the later ones). Problems
(unreadable rows, subjects with one image) are collected as one-line messages, never raised one by one,
so a long run reports them all.
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..errors import DatasetError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".tif", ".tiff"}
MANIFEST = "manifest.csv"


@dataclass(frozen=True)
class Sample:
    path: Path
    subject: str
    extra: str = ""  # comparison group: only images with the same extra are compared
    captured: datetime | None = None  # when the photo was taken (different-day pairs are the realistic case)
    session: int | None = None  # capture session (manifest column "session"): enroll from the first, probe later


class Dataset(list):
    """A list of Samples plus the problems found while reading the folder (each a one-line message)."""

    def __init__(self, samples=(), problems=(), has_captured=False, has_session=False):
        super().__init__(samples)
        self.problems: list[str] = list(problems)
        self.has_captured = has_captured
        self.has_session = has_session


def _parse_captured(text: str) -> datetime | None:
    text = (text or "").strip()
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


def load_dataset(folder: Path) -> Dataset:
    """The images of ``folder`` (``<subject>/<image>`` or a manifest.csv); DatasetError if nothing usable.

    Files that are not images, manifest rows naming missing files and images outside
    a subject folder are skipped with a message in ``.problems``; evaluation goes on.
    """
    folder = Path(folder)
    if not folder.exists():
        raise DatasetError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder (expected <subject>/<image> inside)")
    problems: list[str] = []
    manifest = folder / MANIFEST
    if manifest.is_file():
        samples, has_captured, has_session = _from_manifest(folder, manifest, problems)
    else:
        samples, has_captured, has_session = _from_layout(folder, problems), False, False
    if not samples:
        raise DatasetError(f"{folder}: no images found (expected <subject>/<image>, or a {MANIFEST})")
    samples.sort(key=lambda s: str(s.path))
    counts = Counter((s.subject, s.extra) for s in samples)
    for (subject, extra), count in sorted(counts.items()):
        if count == 1:
            where = f" ({extra})" if extra else ""
            problems.append(f"subject {subject}{where} has a single image: enrolled only, no genuine probes")
    return Dataset(samples, problems, has_captured, has_session)


def _from_layout(folder: Path, problems: list[str]) -> list[Sample]:
    samples = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        rel = path.relative_to(folder)
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            problems.append(f"{rel}: not an image file, skipped")
            continue
        if len(rel.parts) < 2:
            problems.append(f"{rel}: not inside a subject folder, skipped")
            continue
        samples.append(Sample(path, rel.parts[0]))
    return samples


def _from_manifest(folder: Path, manifest: Path, problems: list[str]) -> tuple[list[Sample], bool, bool]:
    try:
        with manifest.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = {"path", "subject"} - set(columns)
            if missing:
                raise DatasetError(f"{manifest}: missing column(s) {', '.join(sorted(missing))} (need path, subject)")
            rows = list(reader)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{manifest}: not a UTF-8 CSV file ({exc.reason})") from None
    except csv.Error as exc:
        raise DatasetError(f"{manifest}: malformed CSV ({exc})") from None
    has_captured, has_session = "captured" in columns, "session" in columns
    samples = []
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        rel, subject = row.get("path", ""), row.get("subject", "")
        if not rel or not subject:
            problems.append(f"{MANIFEST} line {line}: empty path or subject, skipped")
            continue
        path = folder / rel
        if not path.is_file():
            problems.append(f"{MANIFEST} line {line}: {rel} does not exist, skipped")
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            problems.append(f"{rel}: not an image file, skipped")
            continue
        session = None
        if has_session:
            try:
                session = int(row.get("session", ""))
            except ValueError:
                raise DatasetError(f"{manifest} line {line}: session must be a whole number (1, 2, ...), "
                                   f"got {row.get('session', '')!r}") from None
        samples.append(Sample(path, subject, row.get("extra", ""), _parse_captured(row.get("captured", "")), session))
    return samples, has_captured, has_session


def _active_manifest(assets_dir: Path) -> Path:
    """The active model's manifest (firmware_assets/models.json), or the folder's own one."""
    from ..assets import active_manifest_path
    from ..errors import ModelError

    try:
        return active_manifest_path(assets_dir)
    except ModelError as exc:
        raise DatasetError(str(exc)) from None


def trained_subjects(assets_dir: Path, dataset: Path) -> set[str]:
    """Subjects of ``dataset`` that the model manifest says it was trained on (for --exclude-trained)."""
    manifest_path = _active_manifest(assets_dir)
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{manifest_path}: cannot read the model manifest to exclude trained subjects ({exc})") from None
    name = Path(dataset).resolve().name
    split = manifest.get("split")
    if manifest.get("format") == 2 and isinstance(split, dict):  # a learned embedding: trained and calibrated on
        if split.get("set") == name:
            return {str(s) for s in split.get("train", []) + split.get("calibrate", [])}
        return {str(s) for s in (split.get("unit_path") or {}).get(name, {}).get("calibrate", [])}
    training = manifest.get("training")
    subjects = training.get("subjects") if isinstance(training, dict) else None
    if not isinstance(subjects, dict):
        raise DatasetError(f"{manifest_path}: training.subjects (set name -> subjects) is missing; "
                           "cannot tell which people the model saw")
    return {str(s) for s in subjects.get(name, [])}


def tuned_subjects(assets_dir: Path, dataset: Path) -> set[str]:
    """Subjects of ``dataset`` that the preprocessing was tuned on (manifest ``preprocessing.tuned_on``), for
    --exclude-tuned: figures on people neither the model nor the hand finding ever saw."""
    manifest_path = _active_manifest(assets_dir)
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{manifest_path}: cannot read the manifest to exclude tuned subjects ({exc})") from None
    tuned = (manifest.get("preprocessing") or {}).get("tuned_on")
    if not isinstance(tuned, dict):
        raise DatasetError(f"{manifest_path}: preprocessing.tuned_on (set name -> subjects) is missing; "
                           "cannot tell which people the preprocessing was tuned on")
    return {str(s) for s in tuned.get(Path(dataset).resolve().name, [])}
