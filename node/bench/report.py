"""The bench's output: the workload x concurrency table with ratios, the counter check, the plots;
a markdown table and the plot of the marker bench."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _fmt(x: float | None, width: int, prec: int = 1) -> str:
    return f"{x:{width}.{prec}f}" if x is not None else " " * (width - 1) + "-"


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "    -"
    return f"{a / b:5.2f}"


def print_table(results: dict[str, list[dict[str, Any]]], workloads: list[str], concs: list[int]) -> None:
    """One row per workload x concurrency: raftstate's numbers, etcd's, and raftstate/etcd ratios
    (ops/s: higher is better for raftstate; latency ratios: lower is better)."""
    idx = {(r["system"], r["workload"], r["concurrency"]): r for rs in results.values() for r in rs}
    systems = list(results)
    head = f"{'workload':9} {'conc':>4} |"
    for s in systems:
        head += f" {s + ' ops/s':>23} {'p50 ms':>7} {'p99 ms':>7} {'p99.9':>7} {'err':>5} {'retry':>6} |"
    ours = next((s for s in systems if s.startswith("raftstate")), None)
    if "etcd" in systems:
        head += f" {'x ops/s':>7} {'x p50':>6} {'x p99':>6}"
    print(head)
    print("-" * len(head))
    for wl in workloads:
        for c in concs:
            line = f"{wl:9} {c:4d} |"
            for s in systems:
                r = idx.get((s, wl, c))
                if r is None:
                    line += " " * 65 + "|"
                    continue
                errs = sum(r["errors"].values())
                line += (
                    f" {r['ops_per_s']:23.0f} {_fmt(r['p50'], 7)} {_fmt(r['p99'], 7)}"
                    f" {_fmt(r['p999'], 7)}"
                    f" {errs:5d} {r['retries']:6d} |"
                )
            if "etcd" in systems:
                a, b = idx.get((ours, wl, c)), idx.get(("etcd", wl, c))
                if a and b:
                    line += (
                        f" {_ratio(a['ops_per_s'], b['ops_per_s']):>7} {_ratio(a['p50'], b['p50']):>6}"
                        f" {_ratio(a['p99'], b['p99']):>6}"
                    )
            print(line)
    print(f"x = {ours} / etcd (ops/s: >1 means raftstate is faster; latency: <1 means raftstate is faster)")


def check_counters(results: dict[str, list[dict[str, Any]]]) -> bool:
    """Every increment run: final counter values == acknowledged increments (when some outcomes are
    unknown — timeouts — the final sum may exceed the acknowledged one by at most that many)."""
    ok = True
    runs = 0
    for rs in results.values():
        for r in rs:
            ctr = r.get("counters")
            if ctr is None:
                continue
            runs += 1
            good = (
                not ctr["mismatched"]
                if ctr["unknown"] == 0
                else (ctr["acked"] <= ctr["final"] <= ctr["acked"] + ctr["unknown"])
            )
            if not good:
                ok = False
                print(
                    f"COUNTER CHECK FAILED: {r['system']} incr c={r['concurrency']}: acknowledged "
                    f"{ctr['acked']}, final {ctr['final']}, unknown outcomes {ctr['unknown']}, "
                    f"counters off: {ctr['mismatched'][:5]}"
                )
    print(
        f"counter verification: {'passed' if ok else 'FAILED'} ({runs} increment runs, final == acknowledged)"
    )
    return ok


def _pyplot() -> Any:
    """matplotlib.pyplot drawing to files, or None (and a note) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing: no plot (pip install -e '.[bench]')")
        return None
    return plt


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"plot written to {path}")


def plot(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    plt = _pyplot()
    if plt is None:
        return
    workloads = sorted({r["workload"] for rs in results.values() for r in rs})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5.5))
    for s, rs in results.items():
        style = {"raftstate-stream": "-", "raftstate": "-."}.get(s, ":")
        for i, wl in enumerate(workloads):
            pts = sorted((r["concurrency"], r["ops_per_s"]) for r in rs if r["workload"] == wl)
            if pts:
                ax1.plot(*zip(*pts, strict=True), style, marker="o", color=f"C{i}", label=f"{s} {wl}")
        for i, wl in enumerate(("put", "get", "incr")):
            r = next((r for r in rs if r["workload"] == wl and r["concurrency"] == 64), None)
            if r and r["cdf"]:
                xs = r["cdf"]
                ax2.plot(
                    xs, [(k + 1) / len(xs) for k in range(len(xs))], style, color=f"C{i}", label=f"{s} {wl}"
                )
    ax1.set(xscale="log", xlabel="concurrent requests", ylabel="ops/s", title="throughput vs concurrency")
    ax2.set(
        xscale="log", xlabel="latency (ms)", ylabel="fraction of ops", title="latency CDF at 64 concurrent"
    )
    ax1.legend(fontsize=7, ncol=2)
    ax2.legend(fontsize=8)
    _save(fig, path)


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table (cells already formatted)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def plot_markers(rows: list[dict[str, Any]], nodes: list[str], path: Path, title: str) -> None:
    """The marker bench: puts/s (top) and each node's RssAnon (bottom) against the number of keys."""
    plt = _pyplot()
    if plt is None or not rows:
        return
    keys = [r["keys"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    ax1.plot(keys, [r["puts_per_s"] for r in rows], "-o", color="C0")
    ax1.set(ylabel="puts/s (in each step)", title=title)
    ax1.set_ylim(bottom=0)
    for i, nid in enumerate(nodes):
        anon = [r["rss_anon_mb"].get(nid) for r in rows]
        ax2.plot(keys, anon, "-o", color=f"C{i + 1}", label=nid)
    ax2.set(xlabel="keys", ylabel="RssAnon MB")
    ax2.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax2.set_ylim(bottom=0)
    ax2.legend(fontsize=8, loc="upper left")
    _save(fig, path)
