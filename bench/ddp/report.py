"""Assembles bench/results/ddp.md from the raw outputs bench/ddp/run.sh collects in RAW:

  torch-MODEL-W-rR.out                the JSON line bench/ddp/torch_ddp.py prints on rank 0
  chorus_T-MODEL-W-rR/metrics.jsonl   chorus train's metrics over transport T (shm or tcp);
                                      its LAST line is the run summary
                                      {"event":"summary","world":W,"samples_per_s":...,"test_acc":...,
                                       "test_loss":...,"peak_rss_mb_max":...,"overlap_frac":...,...}
  NAME.cmd / .err / .rc               each run's command, stderr and exit status

R runs from 1 to --repeats. Every number in the page is computed from those files: a cell is
the median over the repeats with the spread (min–max) beside it, and a ratio is a ratio of
medians. A run without its result is named in the page and on stderr with the reason, and the
exit status is 1. Standard library only.

usage: report.py --raw DIR --models mlp cnn --worlds 1 2 4 --repeats 3 --command CMD --out FILE [--quick]
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "common"))
from runs import (cpu_model, fmt, fmt_spread, median_spread, read, revision, why_failed,  # noqa: E402
                  write_page)

TORCH_KEYS = ("samples_per_s", "test_acc", "test_loss", "peak_rss_mb_max", "train_s", "steps")
CHORUS_KEYS = ("samples_per_s", "test_acc", "test_loss", "peak_rss_mb_max", "overlap_frac", "train_s", "steps")
# (run-name prefix, what the page calls it)
SIDES = (("chorus_shm", "chorus shm"), ("chorus_tcp", "chorus tcp"), ("torch", "PyTorch DDP"))


def missing_keys(obj, keys):
    return [k for k in keys if not isinstance(obj.get(k), (int, float)) or isinstance(obj.get(k), bool)]


def torch_result(raw, name):
    """(result dict, None) or (None, reason)."""
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


def chorus_result(raw, name, world):
    """(summary dict, None) or (None, reason): the LAST line of NAME/metrics.jsonl."""
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


def results(raw, side, model, world, repeats, problems):
    """The results of one side's repeats of one setting (failed runs left out, named in problems)."""
    out = []
    for r in range(1, repeats + 1):
        name = f"{side}-{model}-{world}-r{r}"
        res, err = torch_result(raw, name) if side == "torch" else chorus_result(raw, name, world)
        if err:
            problems.append(err)
        else:
            out.append(res)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--raw", required=True)
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--worlds", nargs="+", type=int, required=True)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--src", default=None)
    p.add_argument("--command", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()

    problems = []
    out = []
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rev = revision(args.src) if args.src else revision()
    title = "Data-parallel training: chorus against PyTorch DDP"
    out.append(f"# {title}{' (quick smoke run)' if args.quick else ''}\n")
    out.append(f"Written by `{args.command}` on {now} at commit {rev}. Every number below is computed from the raw "
               "outputs that run collected; rerun the command to refresh this page instead of editing it.\n")

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
        key, _, rest_ = line.partition(":")
        loads[key.strip()] = rest_.strip()
    if loads:
        out.append(f"- load average (1/5/15 min) before: {loads.get('before', '?')}; after: {loads.get('after', '?')}")
    out.append("")

    out.append("## Method\n")
    out.append("Both sides train the same model on Fashion-MNIST (normalized with mean 0.2860, std 0.3530) for one "
               "epoch: global batch 128 split evenly over W worker processes, data sharded by a seeded shuffle "
               "(seed 0), cross-entropy, SGD lr 0.05 momentum 0.9 with cosine decay to 0 and no warmup, torch "
               "intra-op threads = cores / W per worker. PyTorch runs DistributedDataParallel over the gloo backend, "
               "which moves every gradient over TCP on loopback (bench/ddp/torch_ddp.py). chorus runs `chorus "
               "train` with bench/ddp/MODEL.toml twice: **chorus shm** over its shared-memory transport (what "
               "`ddp.transport = auto` picks for workers on one host) and **chorus tcp** over its tcp transport on "
               "loopback (`--set ddp.transport=tcp`), the same wire as gloo's. The shm/tcp gap is the transport's "
               "share of the difference; the tcp/PyTorch ratio compares the rest (bucketing, overlap, copies).")
    out.append("")
    out.append(f"- Each setting ran {args.repeats} time(s), the three sides alternating within every repetition "
               "(PyTorch, chorus shm, chorus tcp, then the next setting). A cell is the **median** over the repeats "
               "with the spread (min–max) in parentheses; a ratio is the ratio of the two medians.")
    out.append("- samples/s: samples processed by all workers / wall time of the training loop (barrier to "
               "barrier; evaluation and start-up excluded).")
    out.append("- accuracy: on the whole 10k test split after the epoch (median over the repeats); the difference is "
               "chorus shm minus PyTorch, in percentage points.")
    out.append("- overlap: chorus's fraction of all-reduce time hidden behind the backward pass (median).")
    out.append("- peak RSS: the largest per-worker peak resident set (getrusage ru_maxrss), MiB (median).")
    if args.quick:
        out.append("- **quick run**: only the first 6400 training samples, so the accuracies are low and the "
                   "throughputs include more start-up noise.")
    out.append("")

    out.append("## Commands\n")
    out.append("```")
    out.append(args.command)
    for model in args.models:
        for w in args.worlds:
            for side, _ in SIDES:
                cmd = read(os.path.join(args.raw, f"{side}-{model}-{w}-r1.cmd")).strip()
                if cmd:
                    out.append(cmd)
    out.append("```\n")

    for model in args.models:
        out.append(f"## {model}\n")
        out.append("| workers | chorus shm samples/s | chorus tcp samples/s | PyTorch DDP (gloo) samples/s | "
                   "shm / PyTorch | tcp / PyTorch | chorus acc | PyTorch acc | acc diff (points) | "
                   "chorus overlap shm / tcp | peak RSS chorus / PyTorch (MiB) |")
        out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        shm_median = {}
        for w in args.worlds:
            res = {side: results(args.raw, side, model, w, args.repeats, problems) for side, _ in SIDES}
            sps = {side: [r["samples_per_s"] for r in res[side]] for side, _ in SIDES}
            med = {side: median_spread(sps[side])[0] for side, _ in SIDES}
            if med["chorus_shm"] is not None:
                shm_median[w] = med["chorus_shm"]

            def ratio(a, b):
                return a / b if a and b else None

            r_shm = ratio(med["chorus_shm"], med["torch"])
            r_tcp = ratio(med["chorus_tcp"], med["torch"])
            ca = median_spread([r["test_acc"] for r in res["chorus_shm"]])[0]
            ta = median_spread([r["test_acc"] for r in res["torch"]])[0]
            diff = (ca - ta) * 100 if ca is not None and ta is not None else None
            ov = [median_spread([r["overlap_frac"] for r in res[s]])[0] for s in ("chorus_shm", "chorus_tcp")]
            c_rss = median_spread([r["peak_rss_mb_max"] for r in res["chorus_shm"]])[0]
            t_rss = median_spread([r["peak_rss_mb_max"] for r in res["torch"]])[0]
            out.append(f"| {w} | {fmt_spread(sps['chorus_shm'], ',.0f')} | {fmt_spread(sps['chorus_tcp'], ',.0f')} | "
                       f"{fmt_spread(sps['torch'], ',.0f')} | {fmt(r_shm, '.2f')}{'x' if r_shm else ''} | "
                       f"{fmt(r_tcp, '.2f')}{'x' if r_tcp else ''} | {fmt(ca, '.4f')} | {fmt(ta, '.4f')} | "
                       f"{fmt(diff, '+.2f')} | {fmt(ov[0], '.2f')} / {fmt(ov[1], '.2f')} | "
                       f"{fmt(c_rss, '.0f')} / {fmt(t_rss, '.0f')} |")
        out.append("")
        if 1 in shm_median and 2 in shm_median:
            out.append(f"chorus shm, 2 workers vs 1 (medians): {shm_median[2] / shm_median[1]:.2f}x\n")
        else:
            out.append("chorus shm, 2 workers vs 1: — (a run is missing)\n")

    if problems:
        out.append("## Runs without a result\n")
        for prob in problems:
            out.append(f"- {prob}")
        out.append(f"\nRaw outputs: {args.raw}\n")

    return write_page(args.out, out, problems)


if __name__ == "__main__":
    sys.exit(main())
