#!/usr/bin/env python3
"""How often preprocessing tells left from right hands, and how steadily per person.

    PYTHONPATH=. python scripts/measure_handedness.py --data ../shared/handdata --sets coep_dev webcam_hand2 11k_small

Prints, per set (per view where the set has views, e.g. 11k_small's "palmar left"), how many acquired frames
were called right, left or unknown, and how many people had frames called both ways (a person whose frames
disagree is mirrored on some and not on others: those frames cannot match). For views named "palmar ..." or
"dorsal ..." the expected answer is printed too: a palm seen from its own side keeps its hand, a back of the
hand is its mirror image (a right hand's back looks like a left palm).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path

import cv2

from vendor_node.errors import HandRejected
from vendor_node.hand.dataset import load_dataset
from vendor_node.hand.preprocess import extract_hand
from vendor_node.images import read_grey


def expected(view: str) -> str | None:
    words = view.split()
    if len(words) != 2 or words[1] not in ("left", "right") or words[0] not in ("palmar", "dorsal"):
        return None
    if words[0] == "palmar":
        return words[1]
    return "left" if words[1] == "right" else "right"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/handdata"))
    parser.add_argument("--sets", nargs="+", default=["nir_dev", "coep_dev", "webcam_hand2", "11k_full", "11k_small"])
    args = parser.parse_args()
    cv2.setNumThreads(1)
    for name in args.sets:
        calls: dict[str, Counter] = defaultdict(Counter)
        per_person: dict[tuple[str, str], Counter] = defaultdict(Counter)
        refused: Counter = Counter()
        for sample in load_dataset(args.data / name):
            try:
                side = extract_hand(read_grey(sample.path)).side
            except HandRejected:
                refused[sample.extra] += 1
                continue
            calls[sample.extra][side] += 1
            per_person[(sample.extra, sample.subject)][side] += 1
        for view in sorted(calls):
            counts = calls[view]
            people = [c for (v, _), c in per_person.items() if v == view]
            mixed = sum(1 for c in people if c["left"] and c["right"])
            want = expected(view)
            told = counts["left"] + counts["right"]
            right_calls = f"; {counts[want]}/{told} called {want} as expected" if want and told else ""
            print(f"{name} {view or '(one view)'}: right {counts['right']}, left {counts['left']}, "
                  f"unknown {counts['unknown']}, refused {refused[view]}; people with both calls {mixed}/{len(people)}"
                  f"{right_calls}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
