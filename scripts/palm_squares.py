#!/usr/bin/env python3
"""Regression harness for the classical palm finding (hand/preprocess.py): every untransformed frame's palm square
(centre, side, angle), alignment or refusal reason, and the CPU time of finding it (one thread).

Not part of the unit and writes nothing of the photos (only numbers, to a file you name outside the repository).
Record, then compare after a change (squares within ~1 px / 1 degree, same refusals):
    PYTHONPATH=. python scripts/palm_squares.py record /tmp/squares-before.json
    PYTHONPATH=. python scripts/palm_squares.py record /tmp/squares-after.json
    PYTHONPATH=. python scripts/palm_squares.py compare /tmp/squares-before.json /tmp/squares-after.json
Time two code trees in the same run (alternating per set, each in its own process, CPU time per frame):
    python scripts/palm_squares.py timing /tmp/base-tree . [--rounds 2] [--repeat 3]
Count instructions per frame instead (valgrind's callgrind: the same on a busy machine; a sample of each set):
    python scripts/palm_squares.py instructions /tmp/base-tree . [--frames 40]
Where the squares go on probes turned or scaled about the frame's centre (eval --robustness's "turned A" and
"scaled F"): each found square against the untransformed square carried through the same turn and zoom:
    PYTHONPATH=. python scripts/palm_squares.py transformed "scaled 1.5" --sets coep_dev webcam_hand2
The sets: nir_dev, coep_dev, webcam_hand2, 11k_full from ../shared/handdata (skipped when absent) and the
project's drawn frames (``drawn``: bench loop's default presentations plus turned, scaled, close-up, pegged,
light-background variants and the frames that must be refused).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REAL_SETS = ("nir_dev", "coep_dev", "webcam_hand2", "11k_full")
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "handdata"


def drawn_frames():
    """(name, make) of drawn hands (``make()`` draws the frame): what `bench loop` shows (``default/``),
    variations issue 8 asks for, and frames that must be refused."""
    from functools import partial

    from vendor_node.sim import drawn_hands as d

    for person in range(40):
        yield f"default/{person}", partial(d.draw_hand, 1000 + person, person)
    for person in range(8):
        for rotation in (-30, -15, 15, 30):
            yield f"turned{rotation}/{person}", partial(d.draw_hand, 2000 + person, 1, rotation=rotation)
        for scale in (0.6, 0.8, 1.3, 1.6, 2.4):
            yield f"scale{scale}/{person}", partial(d.draw_hand, 3000 + person, 2, scale=scale)
        yield f"pegs/{person}", partial(d.draw_hand, 4000 + person, 3, pegs=True)
        yield f"light/{person}", partial(d.draw_hand, 5000 + person, 4, background="light", sleeve=True)
        yield f"falloff/{person}", partial(d.draw_hand, 6000 + person, 5, light_falloff=1.5, scale=1.8, shift=(0, 0.1))
        yield f"together/{person}", partial(d.draw_fingers_together, 7000 + person, 6)
        yield f"fist/{person}", partial(d.draw_closed_fingers, 8000 + person, 7)
        yield f"cut_off/{person}", partial(d.draw_cut_off, 9000 + person, 8)
        yield f"blurred/{person}", partial(d.draw_blurred, 10000 + person, 9)
        yield f"too_far/{person}", partial(d.draw_too_far, 11000 + person, 10)
        yield f"too_close/{person}", partial(d.draw_too_close, 12000 + person, 11)
        yield f"two_hands/{person}", partial(d.draw_two_hands, 13000 + person, 14000 + person, 12)
        yield f"blank/{person}", partial(d.blank_frame, seed=person)


def real_frames(name: str):
    """(name, make) of the set's photos (``make()`` reads the photo)."""
    from functools import partial

    from vendor_node.hand.dataset import load_dataset
    from vendor_node.images import read_grey

    folder = DATA / name
    if not folder.is_dir():
        return
    for sample in load_dataset(folder):
        yield str(sample.path.relative_to(folder)), partial(read_grey, sample.path)


def frame_makers(name: str):
    return drawn_frames() if name == "drawn" else real_frames(name)


def frames(name: str):
    return ((key, make()) for key, make in frame_makers(name))


def measure(name: str, repeat: int = 1) -> dict:
    """{frame: {square: [cx, cy, side, angle] | None, alignment, reason, cpu_ms}} for one set; cpu_ms is the
    least of ``repeat`` findings (other work on a shared machine only ever adds to it)."""
    import cv2

    from vendor_node.errors import HandRejected
    from vendor_node.hand.preprocess import extract_hand

    cv2.setNumThreads(1)
    out = {}
    for key, image in frames(name):
        cpu_ms = float("inf")
        for _ in range(repeat):
            start = time.process_time()
            try:
                hand = extract_hand(image)
                reason, alignment, square = None, hand.alignment, hand.square
            except HandRejected as refusal:
                reason, alignment, square, hand = refusal.reason, None, None, None
            cpu_ms = min(cpu_ms, (time.process_time() - start) * 1e3)
        row = {"reason": reason, "alignment": alignment, "cpu_ms": cpu_ms, "square": None}
        if hand is not None:  # to tell a changed cut or measurement from an unchanged one (numbers only)
            row["roi"] = hashlib.sha1(hand.roi.tobytes()).hexdigest()[:12]
            row["geometry"] = [float(g) for g in hand.geometry]
            row["measures"] = {k: float(v) for k, v in hand.measures.items()}
        if square is not None:
            top = square[1] - square[0]
            center = square.mean(axis=0)
            row["square"] = [float(center[0]), float(center[1]), float(np.hypot(*top)),
                             float(np.degrees(np.arctan2(top[1], top[0])))]
        out[key] = row
    return out


def sets(chosen: list[str] | None) -> list[str]:
    return chosen or ["drawn", *REAL_SETS]


def record(path: Path, chosen: list[str] | None) -> None:
    result = {name: measure(name) for name in sets(chosen)}
    path.write_text(json.dumps(result, indent=0))
    for name, rows in result.items():
        print(f"{name:13s} {len(rows):4d} frames  {summary(rows)}")


def summary(rows: dict) -> str:
    cpu = np.array([r["cpu_ms"] for r in rows.values()]) if rows else np.zeros(1)
    refused = sum(r["reason"] is not None for r in rows.values())
    return f"refused {refused:3d}  CPU p50 {np.percentile(cpu, 50):5.1f} ms  p95 {np.percentile(cpu, 95):5.1f} ms"


def compare(before: Path, after: Path, px: float, degrees: float) -> int:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    worst = 0
    for name in a:
        if name not in b:
            continue
        changed, moved, max_px, max_deg, max_side, roi_changed, max_geometry = [], [], 0.0, 0.0, 0.0, 0, 0.0
        max_measure = 0.0
        for key, old in a[name].items():
            new = b[name].get(key)
            if new is None:
                continue
            if old["reason"] != new["reason"] or old["alignment"] != new["alignment"]:
                changed.append(f"{key}: {old['reason'] or old['alignment']} -> {new['reason'] or new['alignment']}")
                continue
            if old["square"] is None:
                continue
            (x0, y0, s0, t0), (x1, y1, s1, t1) = old["square"], new["square"]
            shift = float(np.hypot(x1 - x0, y1 - y0))
            turn = abs((t1 - t0 + 180) % 360 - 180)
            max_px, max_deg, max_side = max(max_px, shift), max(max_deg, turn), max(max_side, abs(s1 - s0))
            roi_changed += old.get("roi") != new.get("roi")
            max_geometry = max(max_geometry, float(np.abs(np.subtract(old.get("geometry", 0), new.get("geometry", 0))).max()))
            for k, v in old.get("measures", {}).items():
                max_measure = max(max_measure, abs(new.get("measures", {}).get(k, v) - v) / max(abs(v), 1e-9))
            if shift > px or turn > degrees or abs(s1 - s0) > px:
                moved.append(f"{key}: moved {shift:.1f} px, side {s1 - s0:+.1f} px, turned {turn:.1f} deg")
        print(f"{name:13s} before {summary(a[name])} | after {summary(b[name])}")
        print(f"{'':13s} largest change: centre {max_px:.2f} px, side {max_side:.2f} px, angle {max_deg:.2f} deg; "
              f"{len(changed)} outcome changes, {len(moved)} squares beyond {px} px / {degrees} deg; "
              f"{roi_changed} ROIs not bit-identical, geometry within {max_geometry:.4f}, "
              f"measures (sharpness, contrast, texture...) within {100 * max_measure:.4f}%")
        for line in changed + moved:
            print("   ", line)
        worst += len(changed) + len(moved)
    return 1 if worst else 0


def timing(trees: list[Path], chosen: list[str] | None, rounds: int, repeat: int) -> None:
    """Each tree's CPU time per frame on each set, alternating trees per set so both see the same load."""
    cpu: dict[tuple[str, str], np.ndarray] = {}
    for _ in range(rounds):
        for name in sets(chosen):
            for tree in trees:
                env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
                done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_times", name, str(repeat)], env=env,
                                      check=True, capture_output=True, text=True)
                per_frame = json.loads(done.stdout)
                groups = {name: list(per_frame)}
                if name == "drawn":  # what `bench loop` shows, apart from the variations and refusals
                    groups["drawn:default"] = [key for key in per_frame if key.startswith("default/")]
                for group, keys in groups.items():
                    times = np.array([per_frame[key] for key in keys])
                    key = (group, str(tree))
                    cpu[key] = np.minimum(cpu[key], times) if key in cpu else times  # each frame's least
    for name in sorted({group for group, _ in cpu}, key=lambda group: list(cpu).index((group, str(trees[0])))):
        line = [f"{name:13s}"]
        for tree in trees:
            values = cpu[(name, str(tree))]
            line.append(f"{str(tree)[-18:]:>18s}: p50 {np.percentile(values, 50):5.1f} p95 "
                        f"{np.percentile(values, 95):5.1f} ms")
        print("  ".join(line))


def instructions(trees: list[Path], chosen: list[str] | None, frames_per_set: int) -> None:
    """Millions of instructions per frame (callgrind, dumped at a marker call before each frame), per set; one
    valgrind run per tree for every set (its start-up is the slow part)."""
    import tempfile

    counts: dict[tuple[str, str], np.ndarray] = {}
    for tree in trees:
        with tempfile.TemporaryDirectory() as folder:
            env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
            done = subprocess.run(["valgrind", "--tool=callgrind", "--dump-before=getppid", "--dump-instr=no",
                                   f"--callgrind-out-file={folder}/cg.out", sys.executable,
                                   str(Path(__file__).resolve()), "_marked", str(frames_per_set), *sets(chosen)],
                                  env=env, check=True, capture_output=True, text=True)
            sizes = json.loads(done.stdout.strip().splitlines()[-1])  # frames found per set, in order
            dumps = sorted(Path(folder).glob("cg.out.*"), key=lambda f: int(f.suffix[1:]))[2:]  # start-up, gap
            per_frame = np.array([_summary(f) for f in dumps[:sum(sizes.values())]]) / 1e6
        start = 0
        for name, size in sizes.items():
            counts[(name, str(tree))] = per_frame[start:start + size]
            start += size
    for name in sets(chosen):
        line = [f"{name:13s}"]
        for tree in trees:
            values = counts.get((name, str(tree)), np.zeros(0))
            if values.size:
                line.append(f"{str(tree)[-18:]:>18s}: {values.size} frames, p50 {np.percentile(values, 50):6.1f} "
                            f"p95 {np.percentile(values, 95):6.1f} M instructions")
        print("  ".join(line))


def _summary(dump: Path) -> int:
    for text in dump.read_text().splitlines():
        if text.startswith("summary:"):
            return int(text.split()[1])
    raise ValueError(f"{dump}: no summary line")


def marked(names: list[str], count: int) -> None:
    """Find the palm in ``count`` frames spread over each set, calling os.getppid (the dump marker) before each;
    prints how many frames each set gave (JSON) last."""
    import cv2

    from vendor_node.errors import HandRejected
    from vendor_node.hand.preprocess import extract_hand

    cv2.setNumThreads(1)
    chosen, sizes = [], {}
    for name in names:
        makers = list(frame_makers(name))
        picked = [make() for _, make in makers[::max(1, len(makers) // count)][:count]]
        chosen += picked
        sizes[name] = len(picked)
    os.getppid()
    for image in chosen:
        os.getppid()
        try:
            extract_hand(image)
        except HandRejected:
            pass
    os.getppid()
    print(json.dumps(sizes))


def transformed(name: str, chosen: list[str] | None, verbose: bool = False) -> None:
    """Per set: how far the palm square found on each transformed frame lies from the untransformed one carried
    through the transform (towards the wrist and across, in sides; its size), and the palm circle's centre and the
    finger valleys' middle the same way (in palm radii); how often the carried square leaves the frame. ``name``:
    "turned A", "scaled F", "nearer F" (zoomed about the palm) or "close-up" (eval --robustness's unit-like close-up: its own turn, zoom and window
    per photo, drawn from the photo's seed as eval draws them)."""
    import cv2

    from vendor_node.errors import HandRejected
    from vendor_node.hand.dataset import load_dataset
    from vendor_node.hand.preprocess import extract_hand
    from vendor_node.hand.robustness import TRANSFORMS, closeup_pose, warp_matrix, within_photo
    from vendor_node.images import read_grey

    close = name.startswith("close-up")
    name = "close-up (unit-like)" if close else name
    if not close:
        kind, amount = name.split()
        angle, factor = (float(amount), 1.0) if kind == "turned" else (0.0, float(amount))
        nearer = kind == "nearer"
    valleys = ("valley_index_middle", "valley_middle_ring", "valley_ring_little")
    cv2.setNumThreads(1)
    for set_name in chosen or REAL_SETS:
        if not (DATA / set_name).is_dir():
            continue
        rows, refused, outside = [], {}, 0
        for sample in load_dataset(DATA / set_name):
            image = read_grey(sample.path)
            try:
                before = extract_hand(image)
            except HandRejected:  # (refused untransformed: nothing to carry)
                continue
            if close:
                turn, zoom, center, size = closeup_pose(image, sample)
                matrix, (h, w) = warp_matrix(image.shape, turn, zoom, center, size)
            else:
                zoom = factor
                center = within_photo(before.keypoints["roi_center"], factor, image.shape) if nearer else None
                matrix, (h, w) = warp_matrix(image.shape, angle, factor, center)
            carry = lambda points: np.asarray(points, dtype=np.float64) @ matrix[:, :2].T + matrix[:, 2]  # noqa: E731
            expected = carry(before.square)
            side = float(np.linalg.norm(expected[1] - expected[0]))
            beyond = max(0.0, -expected[:, 0].min(), -expected[:, 1].min(), expected[:, 0].max() - (w - 1),
                         expected[:, 1].max() - (h - 1)) / side
            try:
                after = extract_hand(TRANSFORMS[name](image, sample))
            except HandRejected as refusal:
                refused[refusal.reason] = refused.get(refusal.reason, 0) + 1
                if verbose:
                    print(f"  {sample.path.relative_to(DATA)}: {refusal.reason} (carried square out by {beyond:.2f})")
                continue
            across = (expected[1] - expected[0]) / side
            wristward = np.array([-across[1], across[0]])
            radius = before.measures["palm_radius"] * zoom
            shift = after.square.mean(axis=0) - expected.mean(axis=0)
            palm = (np.array(after.keypoints["palm_center"]) - carry(before.keypoints["palm_center"])) @ wristward
            found = [k for k in valleys if k in before.keypoints and k in after.keypoints]
            middle = np.nan
            if len(found) == 3:
                middle = (np.mean([after.keypoints[k] for k in found], axis=0)
                          - carry(np.mean([before.keypoints[k] for k in found], axis=0))) @ wristward / radius
            outside += beyond > 0.2
            rows.append((shift @ wristward / side, shift @ across / side,
                         float(np.linalg.norm(after.square[1] - after.square[0])) / side, palm / radius, middle))
            off = float(np.hypot(*rows[-1][:2]))
            if verbose and (off > 0.15 or abs(rows[-1][2] - 1) > 0.15):
                print(f"  {sample.path.relative_to(DATA)}: {after.alignment}, off by {rows[-1][0]:+.2f}/{rows[-1][1]:+.2f}"
                      f" sides, size {rows[-1][2]:.2f}, carried square out by {beyond:.2f}")
        if not rows:
            print(f"{set_name:13s} {name}: none placed, refused {refused or 'none'}")
            continue
        table = np.array(rows)
        quantiles = lambda column: "/".join(f"{v:+.2f}" for v in np.nanpercentile(table[:, column], [10, 50, 90]))  # noqa: E731
        far = int(np.count_nonzero(np.hypot(table[:, 0], table[:, 1]) > 0.15))
        print(f"{set_name:13s} {name}: {len(rows)} placed ({far} off by over 0.15 of a side), refused "
              f"{refused or 'none'}; carried square out of the frame by over 0.2 of its side: {outside}")
        print(f"{'':13s} p10/50/90: square towards the wrist {quantiles(0)} sides, across {quantiles(1)}, size "
              f"{quantiles(2)}; palm centre towards the wrist {quantiles(3)} radii, valleys' middle {quantiles(4)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out", type=Path)
    rec.add_argument("--sets", nargs="*")
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("before", type=Path)
    cmp_.add_argument("after", type=Path)
    cmp_.add_argument("--px", type=float, default=1.0)
    cmp_.add_argument("--degrees", type=float, default=1.0)
    tim = sub.add_parser("timing")
    tim.add_argument("trees", type=Path, nargs="+")
    tim.add_argument("--sets", nargs="*")
    tim.add_argument("--rounds", type=int, default=1)
    tim.add_argument("--repeat", type=int, default=3, help="each frame found this many times, the least CPU kept")
    ins = sub.add_parser("instructions")
    ins.add_argument("trees", type=Path, nargs="+")
    ins.add_argument("--sets", nargs="*")
    ins.add_argument("--frames", type=int, default=40, help="frames per set, spread over it")
    where = sub.add_parser("transformed")
    where.add_argument("transform", help='"scaled F", "nearer F", "turned A" or "close-up" (as eval --robustness names them)')
    where.add_argument("--sets", nargs="*")
    where.add_argument("--verbose", action="store_true", help="name each refused or misplaced frame")
    mark = sub.add_parser("_marked")
    mark.add_argument("count", type=int)
    mark.add_argument("sets", nargs="+")
    hidden = sub.add_parser("_times")
    hidden.add_argument("set")
    hidden.add_argument("repeat", type=int)
    args = parser.parse_args()
    if args.command == "record":
        record(args.out, args.sets)
    elif args.command == "compare":
        return compare(args.before, args.after, args.px, args.degrees)
    elif args.command == "timing":
        timing(args.trees, args.sets, args.rounds, args.repeat)
    elif args.command == "instructions":
        instructions(args.trees, args.sets, args.frames)
    elif args.command == "transformed":
        transformed(args.transform, args.sets, args.verbose)
    elif args.command == "_marked":
        marked(args.sets, args.count)
    else:
        print(json.dumps({key: row["cpu_ms"] for key, row in measure(args.set, args.repeat).items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
