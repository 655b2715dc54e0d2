"""Assembles bench/results/chaos.md from the raw outputs of bench/chaos/run.sh. Every number is
computed from those files (the runs' stderr, metrics.jsonl, the PyTorch driver's JSON line);
nothing is typed in by hand. Standard library only.

usage: report.py --raw DIR --lost-repeat N --worlds-repeat N --chaos-runs N --chaos-timeout S
                 --sections lost worlds chaos --command CMD --out FILE
"""

import argparse
import datetime
import json
import os
import re
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "common"))
from runs import revision, spread_with  # noqa: E402

KILL = re.compile(r"CHORUS_FAULT (kills|stops|loops) it at step (\d+) \(unix time ([0-9.]+)\)")
LOST_METHODS = [("elastic", "chorus elastic (--min 2): 3 survivors go on"),
                ("elastic-replace", "chorus elastic, --restarts 1: a new worker joins (4 again)"),
                ("chorus-restart", "chorus restart-all: the job stops, all restart with --resume"),
                ("torch-restart", "PyTorch DDP, torchrun's restart-all (torch_restart.py)")]


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def records(path):
    out = []
    for line in (read(path) or "").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def cell(values, f):
    """The median of the values that exist, formatted by f, with their spread; "n/a" for none."""
    return spread_with(values, f, "n/a")


def chorus_lost(raw, name, err_name=None):
    """Seconds from the kill (the fault's own line) until the step after it completes again."""
    m = KILL.search(read(os.path.join(raw, (err_name or name) + ".err")) or "")
    if not m:
        return None, f"{name}: no CHORUS_FAULT line in its stderr"
    step, kill = int(m.group(2)), float(m.group(3))
    for e in records(os.path.join(raw, name, "metrics.jsonl")):
        if e.get("event") == "step" and e.get("step") == step + 1 and e.get("unix_s", 0) > kill:
            return e["unix_s"] - kill, None
    return None, f"{name}: no step {step + 1} completed after the kill in metrics.jsonl"


def torch_lost(raw, name):
    for line in (read(os.path.join(raw, name + ".out")) or "").splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("impl") == "torch-restart-all":
            return e.get("lost_s"), e.get("error")
    return None, f"{name}: the driver printed no result (rc {(read(os.path.join(raw, name + '.rc')) or '').strip()})"


def lost_section(a, problems):
    data = {m: [] for m, _ in LOST_METHODS}
    for r in range(1, a.lost_repeat + 1):
        for m, _ in LOST_METHODS:
            name = f"lost-{m}-r{r}"
            if m == "torch-restart":
                v, err = torch_lost(a.raw, name)
            elif m == "chorus-restart":
                v, err = chorus_lost(a.raw, name, f"{name}-a")
            else:
                v, err = chorus_lost(a.raw, name)
            if err:
                problems.append(err)
            data[m].append(v)
    md = ["## Time lost per failure", "",
          "4 workers; worker 2 kills itself (SIGKILL) as it starts step 25 of 50; time lost = from the kill (the "
          "fault's own timestamp) until step 26 completes (the step that was in flight, done again). Restart-all "
          "resumes a checkpoint written every 10 steps, so it also redoes steps 21 to 25. "
          f"{a.lost_repeat} rounds, the four alternating; median (min–max). Debian's torchrun fails before it "
          "starts a worker (`AttributeError: 'NoneType' object has no attribute 'get'`), so torch_restart.py does "
          "what its agent does: it stops every worker and starts them all again.", "",
          "| strategy | time lost (s) | vs chorus elastic |", "|---|---:|---:|"]
    base = statistics.median([v for v in data["elastic"] if v is not None]) if any(
        v is not None for v in data["elastic"]) else None
    for m, title in LOST_METHODS:
        vals = [v for v in data[m] if v is not None]
        ratio = f"{statistics.median(vals) / base:.1f}x" if vals and base else "n/a"
        md.append(f"| {title} | {cell(data[m], lambda v: f'{v:.2f}')} | {ratio} |")
    md.append("")
    torch_vals = [v for v in data["torch-restart"] if v is not None]
    for m in ("elastic", "elastic-replace"):
        vals = [v for v in data[m] if v is not None]
        if vals and torch_vals:
            r = statistics.median(torch_vals) / statistics.median(vals)
            md.append(f"- Target: at least 10x less time lost than restart-all ({m}): "
                      f"**{'met' if r >= 10 else 'not met'}** (PyTorch restart-all / chorus {m} = {r:.1f}x)")
    md.append("")
    return md


def worlds_section(a, problems):
    md = ["## Recovery time against world size", "",
          "chorus elastic without replacements (--min 1): worker 1 of W killed at step 25; time lost as above, the "
          f"job going on with W-1. {a.worlds_repeat} rounds; 6 and 8 workers oversubscribe this 2-core machine.", "",
          "| workers | time lost (s) |", "|---:|---:|"]
    for w in (2, 4, 6, 8):
        vals = []
        for r in range(1, a.worlds_repeat + 1):
            v, err = chorus_lost(a.raw, f"worlds-{w}-r{r}")
            if err:
                problems.append(err)
            vals.append(v)
        md.append(f"| {w} | {cell(vals, lambda v: f'{v:.2f}')} |")
    md.append("")
    return md


def final_acc(raw, name):
    evals = [e for e in records(os.path.join(raw, name, "metrics.jsonl")) if e.get("event") == "eval"]
    return evals[-1].get("test_acc") if evals else None


def chaos_section(a, problems):
    clean = [final_acc(a.raw, f"chaos-clean-r{r}") for r in (1, 2, 3)]
    clean_acc = statistics.median([c for c in clean if c is not None]) if any(c is not None for c in clean) else None
    finished = errors = hangs = other = unreadable = faults = complete = 0
    diffs = []
    for s in range(1, a.chaos_runs + 1):
        name = f"chaos-{s}"
        rc = (read(os.path.join(a.raw, name + ".rc")) or "").strip()
        err = read(os.path.join(a.raw, name + ".err")) or ""
        faults += len(KILL.findall(err))
        if rc == "0":
            finished += 1
        elif rc in ("124", "137") and "fewer than --min" not in err:
            hangs += 1
            problems.append(f"{name}: no exit within {a.chaos_timeout} s (plan {read(os.path.join(a.raw, name + '.plan'))})")
        elif "fewer than --min" in err:
            errors += 1
        else:
            other += 1
            problems.append(f"{name}: exit {rc}: {err.strip().splitlines()[-1] if err.strip() else ''}")
        ckpt = (read(os.path.join(a.raw, name + ".ckpt")) or "").strip()
        if ckpt.startswith("unreadable") and ckpt != "unreadable: none":
            unreadable += 1
            problems.append(f"{name}: its last checkpoint does not load ({ckpt})")
        summary = [e for e in records(os.path.join(a.raw, name, "metrics.jsonl")) if e.get("event") == "summary"]
        start = [e for e in records(os.path.join(a.raw, name, "metrics.jsonl")) if e.get("event") == "start"]
        if rc == "0" and summary and start and summary[-1].get("global_step") == start[0].get("total_steps"):
            complete += 1
        acc = final_acc(a.raw, name)
        if rc == "0" and acc is not None and clean_acc is not None:
            diffs.append(100 * (acc - clean_acc))
    md = ["## Chaos", "",
          f"{a.chaos_runs} runs of `chorus train --nproc 4 --min 2 --restarts 4` (the job above, 2 epochs, 100 steps, "
          "evaluated each epoch), each with 4 faults planned at random steps 12 or more apart: a random live worker "
          "killed (SIGKILL, 2 in 3) or stopped (SIGSTOP), `CHORUS_HEARTBEAT_TIMEOUT_MS` 3000. Undisturbed: 3 runs.", "",
          "| measure | result |", "|---|---:|",
          f"| faults that fired | {faults} |",
          f"| jobs finished | {finished} of {a.chaos_runs} |",
          f"| jobs ended with a clear error (fewer than --min) | {errors} |",
          f"| hangs (no exit within {a.chaos_timeout} s) | {hangs} |",
          f"| other failures | {other} |",
          f"| unreadable last checkpoints (of every run that wrote one) | {unreadable} |",
          f"| finished jobs whose trajectory has every planned step (no sample lost or repeated) | {complete} of {finished} |",
          f"| undisturbed final accuracy | {cell(clean, lambda v: f'{v:.4f}')} |",
          f"| finished jobs' final accuracy − undisturbed (points) | {cell(diffs, lambda v: f'{v:+.2f}')} |", "",
          "Each failure loses the step in flight (redone by the new generation); every step of the final trajectory "
          "takes its planned samples once. Not covered here: parameter-server jobs (their workers are not "
          "elastic yet) and kills timed inside a checkpoint write.", ""]
    return md


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--raw", required=True)
    p.add_argument("--lost-repeat", type=int, default=3)
    p.add_argument("--worlds-repeat", type=int, default=3)
    p.add_argument("--chaos-runs", type=int, default=0)
    p.add_argument("--chaos-timeout", type=int, default=300)
    p.add_argument("--sections", nargs="*", default=["lost", "worlds", "chaos"])
    p.add_argument("--command", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--src", default=os.path.dirname(os.path.dirname(HERE)))
    a = p.parse_args()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = ["# Fault tolerance: time lost per failure, recovery against world size, chaos", "",
          f"Written by `{a.command}` on {now} at commit {revision(a.src)}. Every number below is computed from the "
          "raw outputs that run collected; rerun the command to refresh this page instead of editing it.", "",
          "The job: the MLP of bench/ddp (784-512-256-10, SGD momentum 0.9) on the first 42000 Fashion-MNIST "
          "samples, global batch 840, train.threads 1, every worker a process on this 2-core machine (shared "
          "memory); chorus's elastic runs use `CHORUS_HEARTBEAT_TIMEOUT_MS` 3000 and `CHORUS_TIMEOUT_MS` 30000.",
          "", f"loadavg: {' / '.join((read(os.path.join(a.raw, 'loadavg.txt')) or '').split(chr(10)))}", ""]
    problems = []
    if "lost" in a.sections:
        md += lost_section(a, problems)
    if "worlds" in a.sections:
        md += worlds_section(a, problems)
    if "chaos" in a.sections and a.chaos_runs > 0:
        md += chaos_section(a, problems)
    if problems:
        md += ["## Runs without a result", ""] + [f"- {x}" for x in problems] + [""]
    with open(a.out, "w") as f:
        f.write("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
