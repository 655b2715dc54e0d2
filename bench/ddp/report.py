"""Assembles bench/results/ddp.md from the raw outputs bench/ddp/run.sh collects in RAW:

  torch-MODEL-W.out           the JSON line bench/ddp/torch_ddp.py prints on rank 0
  chorus-MODEL-W/metrics.jsonl  chorus train's metrics; its LAST line is the run summary
                              {"event":"summary","world":W,"samples_per_s":...,"test_acc":...,
                               "test_loss":...,"peak_rss_mb_max":...,"peak_rss_mb_mean":...,
                               "overlap_frac":...,"comm_s":...,"train_s":...,"steps":...}
  NAME.cmd / .err / .rc       each run's command, stderr and exit status

Every number in the page is computed from those files. A run without its result is named in
the page and on stderr with the reason, and the exit status is 1. Standard library only.

usage: report.py --raw DIR --models mlp cnn --worlds 1 2 4 --command CMD --out FILE [--quick]
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "common"))
from runs import cpu_model, fmt, read, why_failed, write_page  # noqa: E402

TORCH_KEYS = ("samples_per_s", "test_acc", "test_loss", "peak_rss_mb_max", "train_s", "steps")
CHORUS_KEYS = ("samples_per_s", "test_acc", "test_loss", "peak_rss_mb_max", "overlap_frac", "train_s", "steps")


def missing_keys(obj, keys):
    return [k for k in keys if not isinstance(obj.get(k), (int, float)) or isinstance(obj.get(k), bool)]


def torch_result(raw, model, world):
    """(result dict, None) or (None, reason)."""
    name = f"torch-{model}-{world}"
    for line in reversed(read(os.path.join(raw, f"{name}.out")).splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if obj.get("impl") == "torch-ddp":
            bad = missing_keys(obj, TORCH_KEYS)
            if bad:
                return None, f"{name}.out: the result line lacks {', '.join(bad)}"
            return obj, None
    return None, f"{name}.out has no result line ({why_failed(raw, name)})"


def chorus_result(raw, model, world):
    """(summary dict, None) or (None, reason): the LAST line of chorus-MODEL-W/metrics.jsonl."""
    name = f"chorus-{model}-{world}"
    path = os.path.join(raw, name, "metrics.jsonl")
    if not os.path.isfile(path):
        return None, f"{name}/metrics.jsonl does not exist ({why_failed(raw, name)})"
    lines = [line for line in read(path).splitlines() if line.strip()]
    if not lines:
        return None, f"{name}/metrics.jsonl is empty ({why_failed(raw, name)})"
    try:
        obj = json.loads(lines[-1])
    except ValueError as e:
        return None, f"{name}/metrics.jsonl: the last line is not JSON ({e}): {lines[-1][:120]}"
    if not isinstance(obj, dict) or obj.get("event") != "summary":
        event = obj.get("event") if isinstance(obj, dict) else None
        return None, (f"{name}/metrics.jsonl: the last line is not the run summary (event {event!r}, expected "
                      f"'summary'; did the run stop early? {why_failed(raw, name)})")
    bad = missing_keys(obj, CHORUS_KEYS)
    if bad:
        return None, f"{name}/metrics.jsonl: the summary lacks {', '.join(bad)}"
    if obj.get("world") not in (None, world):
        return None, f"{name}/metrics.jsonl: the summary says world {obj.get('world')}, the run asked for {world}"
    return obj, None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--raw", required=True)
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--worlds", nargs="+", type=int, required=True)
    p.add_argument("--command", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()

    problems = []
    out = []
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = "Data-parallel training: chorus against PyTorch DDP"
    out.append(f"# {title}{' (quick smoke run)' if args.quick else ''}\n")
    out.append(f"Written by `{args.command}` on {now}. Every number below is computed from the raw outputs that "
               "run collected; rerun the command to refresh this page instead of editing it.\n")

    out.append("## Machine\n")
    try:
        torch_version = subprocess.run(["/usr/bin/python3", "-c", "import torch; print(torch.__version__)"],
                                       capture_output=True, text=True, timeout=120).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        torch_version = "unknown"
    out.append(f"- CPU: {cpu_model()}; nproc {os.cpu_count()}")
    out.append(f"- kernel: {platform.system()} {platform.release()} ({platform.machine()}); "
               f"torch (/usr/bin/python3): {torch_version}")
    loads = {}
    for line in read(os.path.join(args.raw, "loadavg.txt")).splitlines():
        key, _, rest = line.partition(":")
        loads[key.strip()] = rest.strip()
    if loads:
        out.append(f"- load average (1/5/15 min) before: {loads.get('before', '?')}; after: {loads.get('after', '?')}")
    out.append("")

    out.append("## Method\n")
    out.append("Both sides train the same model on Fashion-MNIST (normalized with mean 0.2860, std 0.3530) for one "
               "epoch: global batch 128 split evenly over W worker processes, data sharded by a seeded shuffle "
               "(seed 0), cross-entropy, SGD lr 0.05 momentum 0.9 with cosine decay to 0 and no warmup, torch "
               "intra-op threads = cores / W per worker. PyTorch runs DistributedDataParallel over gloo "
               "(bench/ddp/torch_ddp.py); chorus runs `chorus train` with bench/ddp/MODEL.toml.")
    out.append("")
    out.append("- samples/s: samples processed by all workers / wall time of the training loop (barrier to "
               "barrier; evaluation and start-up excluded).")
    out.append("- accuracy: on the whole 10k test split after the epoch; the difference is chorus minus torch, in "
               "percentage points.")
    out.append("- overlap: chorus's fraction of all-reduce time hidden behind the backward pass.")
    out.append("- peak RSS: the largest per-worker peak resident set (getrusage ru_maxrss), MiB.")
    if args.quick:
        out.append("- **quick run**: only the first 6400 training samples, so the accuracies are low and the "
                   "throughputs include more start-up noise.")
    out.append("")

    out.append("## Commands\n")
    out.append("```")
    out.append(args.command)
    for model in args.models:
        for w in args.worlds:
            for impl in ("torch", "chorus"):
                cmd = read(os.path.join(args.raw, f"{impl}-{model}-{w}.cmd")).strip()
                if cmd:
                    out.append(cmd)
    out.append("```\n")

    for model in args.models:
        out.append(f"## {model}\n")
        out.append("| workers | chorus samples/s | torch-ddp samples/s | ratio | chorus acc | torch acc | "
                   "acc diff (points) | chorus overlap | peak RSS chorus / torch (MiB) |")
        out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        chorus_sps = {}
        for w in args.worlds:
            c, c_err = chorus_result(args.raw, model, w)
            t, t_err = torch_result(args.raw, model, w)
            for err in (c_err, t_err):
                if err:
                    problems.append(err)
            cs = c["samples_per_s"] if c else None
            ts = t["samples_per_s"] if t else None
            if cs is not None:
                chorus_sps[w] = cs
            ratio = cs / ts if cs and ts else None
            ca = c["test_acc"] if c else None
            ta = t["test_acc"] if t else None
            diff = (ca - ta) * 100 if ca is not None and ta is not None else None
            overlap = c["overlap_frac"] if c else None
            c_rss = c["peak_rss_mb_max"] if c else None
            t_rss = t["peak_rss_mb_max"] if t else None
            out.append(f"| {w} | {fmt(cs, ',.0f')} | {fmt(ts, ',.0f')} | {fmt(ratio, '.2f')}{'x' if ratio else ''} | "
                       f"{fmt(ca, '.4f')} | {fmt(ta, '.4f')} | {fmt(diff, '+.2f')} | {fmt(overlap, '.2f')} | "
                       f"{fmt(c_rss, '.0f')} / {fmt(t_rss, '.0f')} |")
        out.append("")
        if 1 in chorus_sps and 2 in chorus_sps:
            out.append(f"chorus world 2 vs world 1: {chorus_sps[2] / chorus_sps[1]:.2f}x\n")
        else:
            out.append("chorus world 2 vs world 1: — (a run is missing)\n")

    if problems:
        out.append("## Runs without a result\n")
        for prob in problems:
            out.append(f"- {prob}")
        out.append(f"\nRaw outputs: {args.raw}\n")

    return write_page(args.out, out, problems)


if __name__ == "__main__":
    sys.exit(main())
