#!/usr/bin/env python3
"""Instructions per task of each variant of benches/instructions.rs, counted by
callgrind (valgrind): the loop run with N and with 2N tasks, the difference
divided by N (so one-time costs, such as a thread's first shard, drop out).

    python3 benches/plot/instructions.py [N] [--features LIST]

N defaults to 10000. The bench is built first (`cargo bench --no-run`) with
every feature, or with the default ones plus LIST when `--features` is given
(`--features default`: the hot path as most users build it). `BENCH_PROFILE=test`
builds it with the test profile instead of the bench one (CI does, to reuse the
tests' build: the script is checked, not the figures). Needs valgrind (Debian
package `valgrind`). Prints a Markdown table, `proxy_spawn` minus `bare` (what the
instrumentation adds to a task), `proxy_execute` over `proxy_spawn`, and what
an exemplar hook, native histograms and a span add to each path.
"""

import glob
import os
import re
import subprocess
import sys
import tempfile

VARIANTS = ["bare", "clock_reads", "proxy_spawn", "proxy_execute", "proxy_submit",
            "proxy_submit_dropped", "proxy_spawn_native"]
# The same two paths through a proxy whose exporter has an exemplar hook (it
# hands out a clone of one prebuilt label set): what exemplars add per task.
EXEMPLAR = ["proxy_spawn_exemplar", "proxy_execute_exemplar"]
# Built only with feature `tracing`: the proxy's paths inside a span, and
# outside one under a subscriber; a span's own cost, without a pool.
IN_SPAN = ["proxy_spawn_in_span", "proxy_execute_in_span", "proxy_spawn_outside_span",
           "span_only"]


def binary(features):
    selected = ["--all-features"] if features is None else ["--features", features]
    profile = os.environ.get("BENCH_PROFILE")
    selected += ["--profile", profile] if profile else []
    out = subprocess.run(
        ["cargo", "bench", *selected, "--bench", "instructions", "--no-run"],
        capture_output=True, text=True, check=True).stderr
    m = re.search(r"\((\S*instructions-[0-9a-f]+)\)", out)
    if m:
        return m.group(1)
    found = sorted(glob.glob("target/*/deps/instructions-*"), key=os.path.getmtime)
    found = [f for f in found if os.access(f, os.X_OK) and not f.endswith(".d")]
    if not found:
        sys.exit("instructions bench binary not found")
    return found[-1]


def collected(bin_path, variant, n):
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/cg.out",
             "--toggle-collect=instructions::loop_*", bin_path, variant, str(n)],
            capture_output=True, text=True, check=True).stderr
    m = re.search(r"Collected : (\d+)", out)
    if not m:
        sys.exit(f"no instruction count from callgrind for {variant}:\n{out}")
    return int(m.group(1))


def main():
    args = sys.argv[1:]
    features = None
    if "--features" in args:
        at = args.index("--features")
        if at + 1 >= len(args):
            sys.exit("--features needs a list (e.g. `default` or `tracing`)")
        features = args[at + 1]
        del args[at:at + 2]
    n = int(args[0]) if args else 10_000
    bin_path = binary(features)
    variants = VARIANTS + EXEMPLAR
    if features is None or "tracing" in features.replace(",", " ").split():
        variants += IN_SPAN
    per_task = {}
    for v in variants:
        per_task[v] = (collected(bin_path, v, 2 * n) - collected(bin_path, v, n)) / n
    print("| variant | instructions per task |")
    print("|---|---|")
    for v in variants:
        print(f"| {v} | {per_task[v]:.1f} |")
    added = per_task["proxy_spawn"] - per_task["bare"]
    print(f"\nproxy_spawn - bare: {added:.1f} instructions added per task")
    ratio = per_task["proxy_execute"] / per_task["proxy_spawn"]
    print(f"proxy_execute / proxy_spawn: {ratio:.2f} (the drop-in path against spawn)")
    native = per_task["proxy_spawn_native"] - per_task["proxy_spawn"]
    print(f"proxy_spawn_native - proxy_spawn: {native:.1f} instructions (native histograms, schema 3)")
    for v in variants[len(VARIANTS):]:
        plain = v.removesuffix("_in_span").removesuffix("_outside_span").removesuffix("_exemplar")
        if plain in per_task and plain != v:
            print(f"{v} - {plain}: {per_task[v] - per_task[plain]:.1f} instructions")


if __name__ == "__main__":
    main()
