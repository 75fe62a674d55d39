#!/usr/bin/env python3
"""Reads criterion's estimates (target/criterion) and target/memory.json after
`cargo bench --all-features`, prints the BENCHMARKS.md tables and draws
docs/throughput.png (tasks per second by task size for each pool).

Figures are criterion's typical estimate per iteration (the slope of time
over samples of growing size, else the mean) with its 95% confidence bounds:
(lower, estimate, upper). One iteration is one task.

usage: python3 benches/plot/report.py [TARGET_DIR] [PNG]
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
    "CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
PNG = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "docs", "throughput.png")
CRIT = os.path.join(TARGET, "criterion")


def est(group, bench):
    """(lower, estimate, upper) in ns per iteration, or None if not run."""
    path = os.path.join(CRIT, group, bench, "new", "estimates.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        e = json.load(f)
    t = e.get("slope") or e["mean"]
    ci = t["confidence_interval"]
    return (ci["lower_bound"], t["point_estimate"], ci["upper_bound"])


def ratio(num, den):
    """num / den with the widest bounds the two intervals allow."""
    if not num or not den:
        return None
    return (num[0] / den[2], num[1] / den[1], num[2] / den[0])


def diff(a, b):
    if not a or not b:
        return None
    return (a[0] - b[2], a[1] - b[1], a[2] - b[0])


def fmt(t, unit="", digits=1):
    if not t:
        return "not run"
    return f"{t[0]:.{digits}f} / **{t[1]:.{digits}f}** / {t[2]:.{digits}f}{unit}"


def throughput_ratio(plain_group, plain, instr_group, instr):
    # Throughput is 1/time: instrumented/plain throughput = plain time / instrumented time.
    return ratio(est(plain_group, plain), est(instr_group, instr))


def verdict(value, target, at_least):
    if not value:
        return "not run"
    if target is None:
        return "(for comparison)"
    ok = value[1] >= target if at_least else value[1] <= target
    return "met" if ok else "**missed**"


rows = []


def row(what, target_text, value, unit, target, at_least, digits=2, note=""):
    vs = ""
    if value and target:
        vs = f"{(value[1] / target):.2f}x target"
    rows.append(f"| {what} | {target_text} | {fmt(value, unit, digits)} | {vs} | "
                f"{verdict(value, target, at_least)} | {note} |")


clock3 = est("recording_1thread", "clock_reads")
for variant, how in (("executor_spawn", "`spawn`"), ("executor_join", "`submit`, handle dropped")):
    r = throughput_ratio("overhead_empty_1sub", "thread_pool", "overhead_empty_1sub", variant)
    row(f"instrumented / plain throughput, empty tasks, 1 submitter: {how}", ">= 0.90", r, "", 0.90,
        True)
    if variant == "executor_spawn":
        # The same plain pool given the instrumentation's three clock reads per task and nothing
        # else (`thread_pool_clocked`), measured in the same run: the best ratio any design that
        # gives each task its own wait and duration can reach on this host.
        r = throughput_ratio("overhead_empty_1sub", "thread_pool", "overhead_empty_1sub",
                             "thread_pool_clocked")
        row("of which: best possible, plain / (plain + three clock reads), measured", "", r, "",
            None, True, note="`thread_pool_clocked`")
        r = throughput_ratio("overhead_empty_1sub", "thread_pool_clocked", "overhead_empty_1sub",
                             variant)
        row("instrumented / (plain + three clock reads): what is not the clock", "", r, "", None,
            True)
    for sub in ("1sub", "2sub"):
        r = throughput_ratio(f"overhead_10us_{sub}", "thread_pool", f"overhead_10us_{sub}", variant)
        row(f"instrumented / plain throughput, 10 us tasks, {sub[0]} submitter(s): {how}", ">= 0.98",
            r, "", 0.98, True)
spawn1 = diff(est("recording_1thread", "proxy_spawn"), est("recording_1thread", "bare"))
row("recording cost per task, 1 thread: full proxy, `spawn` (proxy_spawn - bare)", "<= 60 ns", spawn1,
    " ns", 60, False, 1)
full1 = diff(est("recording_1thread", "proxy_drop"), est("recording_1thread", "bare"))
row("recording cost per task, 1 thread: full proxy, `submit` (proxy_drop - bare)", "<= 60 ns", full1,
    " ns", 60, False, 1)
# clock3: the three clock reads, read above
row("of which: three clock reads alone (same run)", "<= 60 ns", clock3, " ns", 60, False, 1,
    note="the floor while each task gets its own wait and duration")
full2 = diff(est("recording_2thread", "proxy_drop"), est("recording_2thread", "bare"))
row("recording, 2 threads / 1 thread: full proxy", "<= 2x", ratio(full2, full1), "x", 2.0, False)
spawn2 = diff(est("recording_2thread", "proxy_spawn"), est("recording_2thread", "bare"))
row("recording, 2 threads / 1 thread: full proxy, `spawn`", "<= 2x", ratio(spawn2, spawn1), "x", 2.0,
    False)
r = throughput_ratio("pools_empty", "threadpool_crate", "pools_empty", "executor")
row("`ThreadPoolExecutor` / `threadpool` crate throughput, empty tasks: `spawn`", ">= 1.0", r, "",
    1.0, True)
r = throughput_ratio("pools_empty", "threadpool_crate", "pools_empty", "executor_submit")
row("`ThreadPoolExecutor` / `threadpool` crate throughput, empty tasks: `submit`", ">= 1.0", r, "",
    1.0, True)
r = throughput_ratio("pools_empty", "rayon_spawn", "pools_empty", "rayon_proxy")
row("proxy over rayon / bare rayon throughput, empty tasks", ">= 0.90", r, "", 0.90, True)
r = throughput_ratio("pools_empty", "rayon_spawn", "pools_empty", "rayon_clocked")
row("of which: best possible, bare rayon / (bare rayon + three clock reads), measured", ">= 0.90", r,
    "", 0.90, True, note="`rayon_clocked`: the ceiling of the ratio above on this host")
for bench, name in (("process_pool", "plain `ProcessPool`"), ("executor", "`ProcessPoolExecutor`")):
    r = throughput_ratio("process_pool_throughput", "procspawn", "process_pool_throughput", bench)
    row(f"process pool / procspawn pool throughput, tiny tasks: {name}", ">= 1.5", r, "", 1.5, True,
        note="2 workers, batches of 512")
s = est("scrape_text", "100")
s = tuple(v / 1e6 for v in s) if s else None
row("scrape (gather + text encode) with 100 exporters", "<= 2 ms", s, " ms", 2.0, False, 3,
    note="this crate's `TextEncoder`, what `MetricsServer` serves")
for group, name in (("scrape_encode", "same bytes by `prometheus::TextEncoder`"),
                    ("scrape_gather", "of which `registry.gather()` alone"),
                    ("scrape_protobuf", "the protobuf exposition (feature `protobuf`)")):
    s = est(group, "100")
    s = tuple(v / 1e6 for v in s) if s else None
    row(f"scrape with 100 exporters: {name}", "", s, " ms", None, False, 3)
mem = {}
mp = os.path.join(TARGET, "memory.json")
if os.path.exists(mp):
    with open(mp) as f:
        mem = json.load(f)
for v, note in (("executor_spawn", "`spawn`, no handle"),
                ("executor_drop_handles", "`submit`, handles dropped"),
                ("executor_keep_handles", "`submit`, handles kept in a Vec: includes the caller's "
                 "Vec, 16 B per handle (a fat `Arc`)")):
    m = mem.get(v)
    val = (m["beyond_closure"],) * 3 if m else None
    row(f"memory per queued task beyond the closure, `ThreadPoolExecutor`", "<= 128 B", val, " B",
        128, False, 1, note + " (one measurement)")

print("| what | target | min / median / max | vs target | verdict | note |")
print("|---|---|---|---|---|---|")
print("\n".join(rows))

# Every figure, per group.
print()
print("| group | bench | ns per task (lower / estimate / upper) | tasks/s (estimate) |")
print("|---|---|---|---|")
for group in sorted(os.listdir(CRIT)) if os.path.isdir(CRIT) else []:
    gdir = os.path.join(CRIT, group)
    if not os.path.isdir(gdir) or group == "report":
        continue
    for bench in sorted(os.listdir(gdir)):
        e = est(group, bench)
        if e:
            print(f"| {group} | {bench} | {fmt(e, '', 1)} | {1e9 / e[1]:,.0f} |")
if mem:
    print()
    print("| memory variant | tasks | bytes per task | beyond the 8-byte closure | peak RSS (MiB) |")
    print("|---|---|---|---|---|")
    for v, m in mem.items():
        print(f"| {v} | {m['tasks']:,} | {m['bytes_per_task']} | {m['beyond_closure']} | "
              f"{m['peak_rss_bytes'] / 2**20:.1f} |")

# The plot: tasks per second by task size for each pool, one submitter.
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("matplotlib is not installed (pip install matplotlib): no plot drawn")

pools = [("threadpool_crate", "threadpool crate"), ("rayon_spawn", "rayon spawn"),
         ("thread_scope", "std::thread::scope per 1024"), ("thread_pool", "our ThreadPool (plain)"),
         ("executor", "our ThreadPoolExecutor"), ("rayon_proxy", "our proxy over rayon")]
sizes = [("empty", "empty"), ("1us", "~1 us"), ("10us", "~10 us")]
fig, ax = plt.subplots(figsize=(9, 5))
width = 0.8 / len(pools)
for i, (key, label) in enumerate(pools):
    xs, ys, lo, hi = [], [], [], []
    for j, (size, _) in enumerate(sizes):
        e = est(f"pools_{size}", key)
        if not e:
            continue
        xs.append(j + (i - (len(pools) - 1) / 2) * width)
        ys.append(1e9 / e[1])
        lo.append(1e9 / e[1] - 1e9 / e[2])
        hi.append(1e9 / e[0] - 1e9 / e[1])
    ax.bar(xs, ys, width, yerr=[lo, hi], label=label, capsize=2)
for j, (size, _) in enumerate(sizes):
    nanos = {"empty": 0, "1us": 1000, "10us": 10000}[size]
    if nanos:
        ideal = 2 * 1e9 / nanos
        ax.hlines(ideal, j - 0.45, j + 0.45, colors="black", linestyles="dashed", linewidth=1)
ax.set_yscale("log")
ax.set_xticks(range(len(sizes)))
ax.set_xticklabels([f"{label} tasks" for _, label in sizes])
ax.set_ylabel("tasks per second (log scale)")
ax.set_title("Throughput by task size, 2 workers, 1 submitter (dashed: 2 cores / task time)")
ax.legend(fontsize=8, loc="upper right")
ax.grid(axis="y", which="both", alpha=0.3)
fig.tight_layout()
os.makedirs(os.path.dirname(PNG), exist_ok=True)
fig.savefig(PNG, dpi=110)
print(f"\nplot written to {os.path.relpath(PNG, ROOT)}", file=sys.stderr)
