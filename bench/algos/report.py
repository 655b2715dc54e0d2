"""Assembles bench/results/algorithms.md from the JSON rows bench/algos/run.sh collects
(one file per transport, rank count and algorithm). Everything is computed from those rows.

usage: report.py --raw DIR --ranks 2 3 4 --transports shm tcp --command CMD --out FILE
"""

import argparse
import datetime
import json
import os
import platform
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "common"))
from runs import revision  # noqa: E402

ALGOS = ["ring", "hd", "tree", "direct"]


def load(path):
    rows = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                o = json.loads(line)
                rows[int(o["bytes"])] = o
    return rows


def human(b):
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= scale:
            return f"{b // scale} {unit}"
    return f"{b} B"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True)
    ap.add_argument("--ranks", nargs="+", type=int, required=True)
    ap.add_argument("--transports", nargs="+", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    commit = revision()
    with open("/proc/loadavg") as f:
        load_avg = " ".join(f.read().split()[:3])
    out = ["# All-reduce algorithms: which is fastest where", ""]
    out.append(f"Written by `{a.command}` on {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC "
               f"(commit {commit}; {os.cpu_count()} cores; {platform.system()} {platform.release()}; "
               f"load average after: {load_avg}). Rerun the command to refresh this page.")
    out.append("")
    out.append("Each cell is the mean time per call in µs of the slowest rank (`chorus bench collectives "
               "--algo ALGO`, float32 sum, every result checked exactly). **Bold** marks the fastest "
               "explicit algorithm; the last columns show what `auto` picked and its time over the "
               "fastest explicit one (1.00 = auto chose the best; timings are noisy on this shared "
               "2-core machine, so ratios within ~1.2 are ties).")
    out.append("")
    with open(os.path.join(a.raw, "commands.txt")) as f:
        out.append("Commands:\n\n```\n" + f.read().strip() + "\n```\n")
    wrong_total = 0
    worst = []
    for t in a.transports:
        for n in a.ranks:
            data = {algo: load(os.path.join(a.raw, f"{t}-{n}-{algo}.jsonl")) for algo in ALGOS + ["auto"]}
            sizes = sorted(set().union(*[set(d) for d in data.values()]))
            out.append(f"## {t}, {n} ranks")
            out.append("")
            out.append("| size | " + " | ".join(ALGOS) + " | auto picked | auto / best |")
            out.append("|---:|" + "---:|" * len(ALGOS) + ":--|---:|")
            for b in sizes:
                times = {algo: data[algo][b]["time_us"] for algo in ALGOS if b in data[algo]}
                for algo in ALGOS + ["auto"]:
                    if b in data[algo]:
                        wrong_total += int(data[algo][b].get("wrong", 0))
                best = min(times, key=times.get)
                cells = []
                for algo in ALGOS:
                    if algo not in times:
                        cells.append("-")
                    elif algo == best:
                        cells.append(f"**{times[algo]:.1f}**")
                    else:
                        cells.append(f"{times[algo]:.1f}")
                auto = data["auto"].get(b)
                if auto:
                    ratio = auto["time_us"] / times[best]
                    worst.append((ratio, t, n, b, auto["algo"], best))
                    cells += [auto["algo"], f"{ratio:.2f}"]
                else:
                    cells += ["-", "-"]
                out.append(f"| {human(b)} | " + " | ".join(cells) + " |")
            out.append("")
    out.append("## Summary")
    out.append("")
    if worst:
        ratios = sorted(r[0] for r in worst)
        median = ratios[len(ratios) // 2]
        out.append(f"- auto's time over the fastest explicit algorithm: median {median:.2f}, "
                   f"worst {ratios[-1]:.2f} over {len(ratios)} (transport, ranks, size) points.")
        for r, t, n, b, picked, best in sorted(worst, reverse=True)[:5]:
            out.append(f"  - {t}, {n} ranks, {human(b)}: auto picked {picked}, {best} was fastest ({r:.2f}x)")
    out.append(f"- wrong elements over every run: {wrong_total}")
    out.append("")
    with open(a.out, "w") as f:
        f.write("\n".join(out))


if __name__ == "__main__":
    main()
