"""The verdict table and the report folder of a chaos run.

report/history.jsonl   every op (written live by history.py)
report/faults.json     the fault timeline: kind, start/end (s since the workload began), what
report/result.json     verdicts, anomalies, fault counts, the replay command
report/report.html     verdicts plus latency over time, fault windows shaded (inline SVG)
report/n*.log          every node's log
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raftstate.node.chaos.faults import FaultWindow
from raftstate.node.chaos.history import Op

if TYPE_CHECKING:
    from raftstate.node.chaos.run import RunResult

COLORS = {
    "kill": "#e45756",
    "pause": "#f58518",
    "partition": "#4c78a8",
    "clock": "#b279a2",
    "restart-all": "#9d755d",
    "membership": "#72b7b2",
    "wipe-follower": "#54a24b",
    "kill-receiver": "#e45756",
    "kill-sender": "#b22222",
}
STATUS_COLORS = {"ok": "#2a9d3a", "fail": "#d62728", "info": "#ff9f1c"}


def verdict_table(result: RunResult) -> str:
    rows = [("check", "verdict", "ops checked", "anomalies")]
    for r in result.results:
        rows.append((r.name, r.verdict.upper(), str(r.ops_checked), str(len(r.anomalies))))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in result.results:
        for a in r.anomalies[:10]:
            lines.append(f"  ! {r.name}: {a}")
        if len(r.anomalies) > 10:
            lines.append(f"  ! {r.name}: ... {len(r.anomalies) - 10} more in result.json")
        if r.note:
            lines.append(f"  ? {r.name}: {r.note}")
    if result.error:
        lines.append(f"  ! run: {result.error}")
    lines += [f"  = {n}" for n in result.notes]
    return "\n".join(lines)


def write_report(
    report_dir: Path,
    result: RunResult,
    ops: Sequence[Op],
    windows: Sequence[FaultWindow],
    t0: float,
    replay: str,
) -> None:
    timeline = [
        {
            "kind": w.kind,
            "start_s": round(w.start_t - t0, 3),
            "end_s": round(w.end_t - t0, 3),
            "detail": w.detail,
        }
        for w in windows
    ]
    (report_dir / "faults.json").write_text(json.dumps(timeline, indent=1))
    (report_dir / "result.json").write_text(json.dumps(summary_json(result, replay), indent=1, default=repr))
    (report_dir / "report.html").write_text(_html(result, ops, timeline, t0, replay), encoding="utf-8")


def summary_json(result: RunResult, replay: str) -> dict[str, Any]:
    return {
        "seed": result.cfg.seed,
        "passed": result.passed,
        "error": result.error,
        "ops": result.ops,
        "faults": dict(result.fault_counts),
        "notes": result.notes,
        "checks": [
            {
                "name": r.name,
                "verdict": r.verdict,
                "ops_checked": r.ops_checked,
                "anomalies": r.anomalies,
                "note": r.note,
            }
            for r in result.results
        ],
        "replay": replay,
    }


def latency_svg(
    ops: Sequence[Op], timeline: list[dict[str, Any]], t0: float, width: int = 1100, height: int = 360
) -> str:
    """Latency (log scale) of every op over time; unknown outcomes drawn at the time they were given
    up on; fault windows shaded and labelled."""
    pad_l, pad_b, pad_t = 55, 30, 20
    pts = [(o.invoke_t - t0, _shown_latency(o), o.status) for o in ops if o.process != "final"]
    t_max = float(max([p[0] for p in pts] + [w["end_s"] for w in timeline] + [1.0]))
    lo, hi = 1e-3, max([p[1] for p in pts] + [1.0]) * 1.2

    def x(t: float) -> float:
        return pad_l + (width - pad_l - 10) * t / t_max

    def y(lat: float) -> float:
        lat = min(max(lat, lo), hi)
        return pad_t + (height - pad_t - pad_b) * (1 - math.log(lat / lo) / math.log(hi / lo))

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11" '
        'font-family="sans-serif">'
    ]
    for w in timeline:
        x0, x1 = x(w["start_s"]), x(max(w["end_s"], w["start_s"] + 0.05))
        out.append(
            f'<rect x="{x0:.1f}" y="{pad_t}" width="{x1 - x0:.1f}" height="{height - pad_t - pad_b}" '
            f'fill="{COLORS.get(w["kind"], "#999")}" opacity="0.18"><title>{html.escape(w["detail"])}'
            f"</title></rect>"
        )
        out.append(
            f'<text x="{x0 + 2:.1f}" y="{pad_t - 4}" fill="{COLORS.get(w["kind"], "#999")}">'
            f"{html.escape(w['kind'])}</text>"
        )
    for t, lat, status in pts:
        out.append(
            f'<circle cx="{x(t):.1f}" cy="{y(lat):.1f}" r="1.6" fill="{STATUS_COLORS[status]}" '
            'opacity="0.6"/>'
        )
    for dec in range(-3, 3):
        v = 10.0**dec
        if lo <= v <= hi:
            out.append(
                f'<line x1="{pad_l}" x2="{width - 10}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>'
                f'<text x="4" y="{y(v) + 4:.1f}">{v:g} s</text>'
            )
    step = max(1, int(t_max / 12))
    for s in range(0, int(t_max) + 1, step):
        out.append(f'<text x="{x(s) - 4:.1f}" y="{height - 10}">{s}s</text>')
    out.append("</svg>")
    return "\n".join(out)


def _shown_latency(o: Op) -> float:
    if o.latency_s is not None:
        return o.latency_s
    return float(o.extra.get("gave_up_t", o.invoke_t)) - o.invoke_t


def _html(
    result: RunResult, ops: Sequence[Op], timeline: list[dict[str, Any]], t0: float, replay: str
) -> str:
    verdict = "PASS" if result.passed else "FAIL"
    rows = "".join(
        f"<tr><td>{r.name}</td><td class='{r.verdict}'>{r.verdict}</td><td>{r.ops_checked}</td>"
        f"<td>{'<br>'.join(html.escape(a) for a in r.anomalies[:20])}{html.escape(r.note)}</td></tr>"
        for r in result.results
    )
    faults = "".join(
        f"<tr><td>{w['start_s']:.1f}–{w['end_s']:.1f}s</td><td>{html.escape(w['kind'])}</td>"
        f"<td>{html.escape(w['detail'])}</td></tr>"
        for w in timeline
    )
    err = f"<p class='fail'>{html.escape(result.error)}</p>" if result.error else ""
    err += "".join(f"<p>{html.escape(n)}</p>" for n in result.notes)
    title = f"chaos seed {result.cfg.seed}: {verdict}"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:2px 10px;text-align:left;vertical-align:top}}
.pass{{color:#2a9d3a}} .fail{{color:#d62728}} .unknown{{color:#ff9f1c}}</style></head><body>
<h1>chaos run, seed {result.cfg.seed}: <span class="{verdict.lower()}">{verdict}</span></h1>
<p>{result.ops} ops, faults: {html.escape(json.dumps(dict(result.fault_counts)))}; replay:
<code>{html.escape(replay)}</code></p>{err}
<table><tr><th>check</th><th>verdict</th><th>ops checked</th><th>anomalies</th></tr>{rows}</table>
<h2>Latency over time</h2><p>each dot an op (green ok, red failed, orange unknown outcome, drawn when the
client gave up); shaded: fault windows (hover for details)</p>
{latency_svg(ops, timeline, t0)}
<h2>Fault timeline</h2><table>{faults}</table></body></html>
"""
