#!/usr/bin/env python3
"""Helpers for benches/load/run.sh.

  summarize.py latency LOG...          -> "p50_ms p99_ms" from pgbench --log files
  summarize.py report RAW.jsonl OUTDIR -> table on stdout, OUTDIR/results.json,
                                          OUTDIR/results.png (if matplotlib loads)

A pgbench --log line is "client_id transaction_no time script_no epoch us
[schedule_lag]"; the third field is the transaction's latency in µs.
"""
import json
import statistics
import sys
from collections import defaultdict

TARGETS = ["direct", "pgbouncer", "sluice", "sluice-mt", "sluice-routed"]


def latency(paths):
    lat = []
    for p in paths:
        with open(p) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    lat.append(int(parts[2]))
    if not lat:
        print("- -")
        return
    lat.sort()

    def pct(q):
        return lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0

    print(f"{pct(0.50):.3f} {pct(0.99):.3f}")


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fresh(field, values):
    """Memory figures over several rounds: a pooler keeps the memory of an
    earlier round's 10,000 idle clients and reuses it later, which inflates
    later peaks and hides later growth. So the peak is the lowest round's and
    the growth per idle client the highest round's (both the first round's,
    in practice); the rest are medians."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    if field == "rss_peak_kb":
        return min(values)
    if field == "rss_per_idle_client_b":
        return max(values)
    return statistics.median(values)


def report(raw_path, outdir):
    runs = [json.loads(line) for line in open(raw_path) if line.strip()]
    meta = runs[0].get("meta", {}) if runs and "meta" in runs[0] else {}
    runs = [r for r in runs if "scenario" in r]
    scenarios = []
    grouped = defaultdict(list)
    for r in runs:
        if r["scenario"] not in scenarios:
            scenarios.append(r["scenario"])
        grouped[(r["scenario"], r["target"])].append(r)
    targets = [t for t in TARGETS if any(k[1] == t for k in grouped)]
    fields = ["tps", "p50_ms", "p99_ms", "cpu_s_per_10k", "rss_peak_kb", "rss_per_idle_client_b"]
    summary = {"meta": meta, "scenarios": {}}
    for s in scenarios:
        summary["scenarios"][s] = {}
        for t in targets:
            rs = grouped.get((s, t), [])
            if not rs:
                continue
            entry = {"runs": len(rs), "failed": sum(1 for r in rs if r.get("failed"))}
            ok = [r for r in rs if not r.get("failed")]
            for f in fields:
                entry[f] = fresh(f, [r.get(f) for r in ok])
            summary["scenarios"][s][t] = entry
    with open(f"{outdir}/results.json", "w") as f:
        json.dump(summary, f, indent=2)

    def fmt(v, spec):
        width = int(spec.split(".")[0])
        return "-".rjust(width) if v is None else format(v, spec)

    header = f"{'scenario':<18}{'target':<15}{'tps':>9}{'p50 ms':>9}{'p99 ms':>9}{'cpu s/10k':>11}{'peak RSS MB':>13}{'B/idle client':>15}"
    print(header)
    for s in scenarios:
        for t, e in summary["scenarios"][s].items():
            if e["failed"] == e["runs"]:
                print(f"{s:<18}{t:<15}{'failed':>9}")
                continue
            rss = e["rss_peak_kb"] / 1024 if e["rss_peak_kb"] else None
            print(
                f"{s:<18}{t:<15}{fmt(e['tps'], '9.0f')}{fmt(e['p50_ms'], '9.3f')}{fmt(e['p99_ms'], '9.3f')}"
                f"{fmt(e['cpu_s_per_10k'], '11.3f')}{fmt(rss, '13.1f')}{fmt(e['rss_per_idle_client_b'], '15.0f')}"
            )
    print()
    print("pooler CPU per transaction, sluice / PgBouncer:")
    for s in scenarios:
        e = summary["scenarios"][s]
        b = e.get("pgbouncer", {})
        for t in ("sluice", "sluice-mt"):
            sl = e.get(t, {})
            if b.get("cpu_s_per_10k") and sl.get("cpu_s_per_10k") and b.get("failed") == 0:
                print(f"  {s:<18}{t:<11}cpu {sl['cpu_s_per_10k'] / b['cpu_s_per_10k']:.2f}x   tps {sl['tps'] / b['tps']:.2f}x")
    print()
    print("connect per transaction, TPS against direct PostgreSQL's:")
    for s in scenarios:
        e = summary["scenarios"][s]
        d = e.get("direct", {})
        if not s.startswith("connect") or not d.get("tps"):
            continue
        for t in ("pgbouncer", "sluice", "sluice-mt", "sluice-routed"):
            if e.get(t, {}).get("tps"):
                print(f"  {s:<18}{t:<15}{e[t]['tps'] / d['tps']:.1f}x")
    chart(summary, scenarios, targets, f"{outdir}/results.png")


def chart(summary, scenarios, targets, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not available: no chart", file=sys.stderr)
        return
    fig, axes = plt.subplots(2, 1, figsize=(11, 8))
    width = 0.8 / max(1, len(targets))
    for ax, field, label in [
        (axes[0], "tps", "transactions per second"),
        (axes[1], "cpu_s_per_10k", "pooler CPU seconds per 10,000 transactions"),
    ]:
        for i, t in enumerate(targets):
            xs, ys = [], []
            for j, s in enumerate(scenarios):
                v = summary["scenarios"][s].get(t, {}).get(field)
                if v is not None:
                    xs.append(j + (i - (len(targets) - 1) / 2) * width)
                    ys.append(v)
            if ys and not (field == "cpu_s_per_10k" and t == "direct"):
                # One colour per target in both panels.
                ax.bar(xs, ys, width, label=t, color=f"C{TARGETS.index(t)}")
        ax.set_xticks(range(len(scenarios)))
        ax.set_xticklabels(scenarios, rotation=15)
        ax.set_ylabel(label)
        ax.legend()
    meta = summary.get("meta", {})
    fig.suptitle(f"pgbench through poolers, transaction mode, pool {meta.get('pool', '?')}, "
                 f"{meta.get('duration', '?')} s x {meta.get('rounds', '?')} interleaved rounds")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    if sys.argv[1] == "latency":
        latency(sys.argv[2:])
    elif sys.argv[1] == "report":
        report(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
