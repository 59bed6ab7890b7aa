"""What `vendor-node eval` shows: the terminal table and the DET curve (matplotlib, the eval extra)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("vendor_node.evaluation")


def _pct(value) -> str:
    if value is None:
        return "-"
    if 0 < value < 1e-4:
        return f"{100 * value:.1e}%"
    return f"{100 * value:.2f}%"


def format_table(report: dict) -> str:
    v, ident, lat = report["verification"], report["identification"], report["latency_ms"]

    def at_fmr(target: str) -> str:
        few = "" if v.get(f"fnmr_at_fmr_{target}_reliable", True) else " (few impostors)"
        return _pct(v.get(f"fnmr_at_fmr_{target}")) + few

    def ms(block: dict) -> str:
        return f"{block['median']} / {block['p95']}"

    reasons = f"  {report['failure_reasons']}" if report["failure_reasons"] else ""
    policy = f"t={ident['threshold']:.4g} m={ident['margin']:.4g}"
    rows = [
        ("images / subjects", f"{report['images']} / {report['subjects']} (enroll {report['enroll']})"),
        ("genuine / impostor scores", f"{v['genuine']} / {v['impostor']}"),
        ("EER", _pct(v.get("eer"))),
        *((f"FNMR @ FMR 1e-{k}", at_fmr(f"1e-{k:02d}")) for k in range(3, 7)),
        ("rank-1 (counting FTA as misses)", f"{_pct(ident['rank1'])} ({_pct(ident['rank1_counting_fta'])})"),
        (f"FPIR / FNIR @ {policy}", f"{_pct(ident.get('fpir'))} / {_pct(ident.get('fnir'))}"),
        ("wrong payer (mated probes)", _pct(ident.get("wrong_subject"))),
        ("failure to acquire", _pct(report["failure_to_acquire"]) + reasons),
        ("features ms median / p95", ms(lat["features"])),
        (f"match ms median / p95 (vs {lat['gallery_size']})", ms(lat["match"])),
        ("total ms median / p95", ms(lat["total"])),
    ]
    projection = report.get("projection") or {}
    if projection:
        wrong = [_pct(projection[f"wrong_payer_at_most_of_{n}"]) for n in (100, 1000)]
        rows.append(("wrong payer of 100 / 1,000 (projected)", f"<= {wrong[0]} / <= {wrong[1]}"))
        refused = (_pct(projection["fnmr"]), _pct(projection["false_refusal_after_second_try"]))
        rows.append(("false refusal, 1 try / 2 tries", f"{refused[0]} / {refused[1]}"))
    for extra, block in report.get("by_group", {}).items():
        if block["genuine"] and "eer" in block:
            rows.append((f"EER, {extra} ({block['genuine']} genuine)", _pct(block["eer"])))
    for day, block in report.get("by_capture_day", {}).items():
        if block["genuine"]:
            rows.append((f"EER, {day.replace('_', ' ')} ({block['genuine']} genuine)", _pct(block.get("eer"))))
    opened = report.get("open_set") or {}
    if opened:
        wrong, refused = opened["wrong_payer_stranger"], opened["refused"]
        rows.append((f"open set: {opened['enrolled']} enrolled, {opened['strangers']} strangers",
                     f"stranger accepted {wrong['count']}/{wrong['of']} (<= {_pct(wrong['upper_95'])}), "
                     f"enrolled refused {refused['count']}/{refused['of']}, "
                     f"wrong payer {opened['wrong_payer_enrolled']['count']} @ t={opened['threshold']:.4g}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {val}" for k, val in rows)


def plot_det(curves: dict, report: dict, path: Path, title: str) -> str | None:
    """The DET curve (FNMR against FMR, log axes) as PNG; ImportError without matplotlib (the eval extra)."""
    curves = {k: c for k, c in curves.items() if c[0].size}
    if not curves:
        log.warning("no genuine and impostor scores: no DET curve drawn")
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    floor = 1e-5
    for label, (fmr, fnmr) in curves.items():
        ax.plot(np.maximum(fmr, floor), np.maximum(fnmr, floor), label=label)
    eer_value = report["verification"].get("eer")
    if eer_value is not None:
        ax.plot([floor, 1], [floor, 1], ":", color="grey", linewidth=0.8)
        ax.annotate(f"EER {100 * eer_value:.2f}%", (max(eer_value, floor), max(eer_value, floor)))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(floor, 1)
    ax.set_xlabel("false match rate")
    ax.set_ylabel("false non-match rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)
