#!/usr/bin/env python3
"""Paired rounds: runs one bench's quick mode several times in a row and
prints, for each bench, the median of its per-round estimates, and for each
group the ratio of a baseline to the others, round by round and as a median.

Why: a full run measures each variant in its own multi-second window, and
this host's speed drifts by a few percent between windows, which is as large
as the gaps some targets are about (10 us tasks: >= 0.98). Rounds alternate
the variants every few hundred milliseconds, so a drift hits both sides of a
ratio alike, and the median over rounds drops the rounds a burst of noise hit.

    python3 benches/plot/rounds.py ROUNDS BENCH FILTER BASELINE [A:B ...]
    python3 benches/plot/rounds.py 15 overhead 'overhead_10us_(1|2)sub/(thread_pool|executor_spawn)' thread_pool

BENCH is a file of benches/ without `.rs`; FILTER is criterion's regex;
BASELINE names the bench every other bench of its group is compared with
(ratio = baseline time / bench time, i.e. the bench's relative throughput).
Each `A:B` names two variants of a group to set against each other round by
round: the median of A's time minus B's, of A's time over B's, and in how
many rounds A was the slower, with the chance of at least that many if
neither were slower than the other (a one-sided sign test; small means A is
really slower). Each round runs with `EE_BENCH_ROUND` set to its number, so
a bench can swap the order of two variants in every other round
(`common::in_round_order`).
Each round's share of CPU time stolen by the hypervisor (/proc/stat) is
printed with it, and the median steal under the tables. Results go to a
scratch criterion directory (`CRITERION_HOME`), so a full
run's figures in target/criterion, which report.py reads, stay as they were.
`BENCH_PROFILE=test` builds the bench with the test profile (CI does, to
reuse the tests' build; its figures then say nothing about speed).
"""

import math
import os
import re
import statistics
import subprocess
import sys
import tempfile

UNITS = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}
TIME = re.compile(r"time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]")


def cpu_times():
    """(steal, total) jiffies of all CPUs, from /proc/stat (zeros elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return (0, 0)
    # user nice system idle iowait irq softirq steal guest guest_nice; guest
    # time is already in user and nice.
    return (fields[7] if len(fields) > 7 else 0, sum(fields[:8]))


def run_round(bench, filt, home, number):
    env = dict(os.environ, BENCH_QUICK="1", CRITERION_HOME=home, EE_BENCH_ROUND=str(number))
    profile = os.environ.get("BENCH_PROFILE")
    out = subprocess.run(
        ["cargo", "bench", "--all-features", *(["--profile", profile] if profile else []),
         "--bench", bench, "--", filt],
        env=env, check=True, capture_output=True, text=True,
    ).stdout
    # A bench's name starts a line; its time follows on the same line (short
    # names) or on the next one. The change lines below it have three
    # figures, not six, and do not match.
    figures, name = {}, None
    for line in out.splitlines():
        head = line.split()[0] if line.strip() else ""
        if "/" in head and not line.startswith(" "):
            name = head
        m = TIME.search(line)
        if m and name:
            figures[name] = float(m.group(1)) * UNITS[m.group(2)]
            name = None
    return figures


def sign_test(slower, n):
    """The chance of at least `slower` of `n` fair coin tosses coming up heads."""
    return sum(math.comb(n, k) for k in range(slower, n + 1)) / 2 ** n


def pairs_table(pairs, per_round):
    """Prints each pair `A:B` of variants, round by round (see the module doc)."""
    print()
    print("| A − B, round by round | median A − B (ns) | median A / B | rounds A slower | sign test |")
    print("|---|---|---|---|---|")
    for pair in pairs:
        a, b = pair.split(":", 1)
        groups = sorted({name.rsplit("/", 1)[0] for figures in per_round for name in figures
                         if name.rsplit("/", 1)[1] == a})
        for group in groups:
            both = [(f[f"{group}/{a}"], f[f"{group}/{b}"]) for f in per_round
                    if f"{group}/{a}" in f and f"{group}/{b}" in f]
            if not both:
                continue
            slower = sum(1 for x, y in both if x > y)
            print(f"| {group}: {a} − {b} | **{statistics.median(x - y for x, y in both):.1f}** | "
                  f"{statistics.median(x / y for x, y in both):.3f} | {slower} of {len(both)} | "
                  f"p = {sign_test(slower, len(both)):.3f} |")


def main():
    if len(sys.argv) < 5 or not all(":" in p for p in sys.argv[5:]):
        sys.exit(__doc__)
    rounds, bench, filt, baseline = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    pairs, per_round = sys.argv[5:], []
    per_bench, ratios, steals = {}, {}, []
    with tempfile.TemporaryDirectory() as home:
        for r in range(rounds):
            before = cpu_times()
            figures = run_round(bench, filt, home, r + 1)
            per_round.append(figures)
            after = cpu_times()
            total = after[1] - before[1]
            steal = 100.0 * (after[0] - before[0]) / total if total else 0.0
            steals.append(steal)
            if not figures:
                sys.exit(f"round {r + 1}: no bench matched {filt!r}")
            for name, ns in figures.items():
                per_bench.setdefault(name, []).append(ns)
            for name, ns in figures.items():
                group, variant = name.rsplit("/", 1)
                base = figures.get(f"{group}/{baseline}")
                if variant != baseline and base is not None:
                    ratios.setdefault(name, []).append(base / ns)
            print(f"round {r + 1}/{rounds} (steal {steal:.0f}%): "
                  + ", ".join(f"{n} {v:.1f} ns" for n, v in sorted(figures.items())),
                  file=sys.stderr)
    if not any(name.rsplit("/", 1)[1] == baseline for name in per_bench):
        sys.exit(f"the baseline {baseline!r} was not among the benches run: {sorted(per_bench)}")
    print(f"CPU time stolen by the hypervisor during the rounds: median {statistics.median(steals):.0f}%, "
          f"max {max(steals):.0f}% (/proc/stat; figures taken at a high steal are slower and noisier)")
    print()
    print(f"| bench | median of {rounds} rounds (ns) | min | max |")
    print("|---|---|---|---|")
    for name, values in sorted(per_bench.items()):
        print(f"| {name} | **{statistics.median(values):.1f}** | {min(values):.1f} | {max(values):.1f} |")
    print()
    print(f"| ratio ({baseline} / bench), round by round | median | min | max |")
    print("|---|---|---|---|")
    for name, values in sorted(ratios.items()):
        print(f"| {name} | **{statistics.median(values):.3f}** | {min(values):.3f} | "
              f"{max(values):.3f} |")
    if pairs:
        pairs_table(pairs, per_round)


if __name__ == "__main__":
    main()
