"""Assembles bench/results/chaos.md from the raw outputs of bench/chaos/run.sh. Every number is
computed from those files (the runs' stderr, metrics.jsonl, the PyTorch driver's JSON line);
nothing is typed in by hand. Standard library only.

usage: report.py --raw DIR --lost-repeat N --worlds-repeat N --chaos-runs N --chaos-timeout S
                 --ps-runs N --ps-clean N --ps-timeout S --mp-repeat N --sections lost worlds chaos ps mp
                 --command CMD --out FILE
"""

import argparse
import datetime
import hashlib
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
                ("elastic-spare", "chorus elastic, --restarts 1 --spares 1: a waiting spare joins (4 again)"),
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
          f"{a.lost_repeat} rounds, the five alternating; median (min–max). Debian's torchrun fails before it "
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
    for m in ("elastic", "elastic-replace", "elastic-spare"):
        vals = [v for v in data[m] if v is not None]
        if vals and torch_vals:
            r = statistics.median(torch_vals) / statistics.median(vals)
            md.append(f"- Target: at least 10x less time lost than restart-all ({m}): "
                      f"**{'met' if r >= 10 else 'not met'}** (PyTorch restart-all / chorus {m} = {r:.1f}x)")
    md.append("")
    return md


MP_LAYOUTS = [("tp", "tp 2 x dp 2"), ("pp", "pp 2 (1F1B, 4 micro-batches) x dp 2"),
              ("tp1", "tp 2, dp 1 (2 workers; a neighbour's copy)")]


def wall_per_step(raw, name):
    """Wall seconds per step between the first and the last step record (log_every 1)."""
    steps = [e for e in records(os.path.join(raw, name, "metrics.jsonl")) if e.get("event") == "step"]
    if len(steps) < 2:
        return None, f"{name}: fewer than 2 step records in metrics.jsonl"
    return (steps[-1]["unix_s"] - steps[0]["unix_s"]) / (steps[-1]["step"] - steps[0]["step"]), None
MP_METHODS = [("replace", "chorus elastic in place, --min N --restarts 1: a new process takes the place"),
              ("spare", "chorus elastic in place, --spares 1: a waiting spare takes the place"),
              ("restart", "chorus restart-all, --restarts 1 without --min (torchrun's strategy)")]


def mp_section(a, problems):
    md = ["## Time lost per failure: tensor- and pipeline-parallel jobs", "",
          "The GPT of configs/gpt.toml (4 layers, embed 128, 0.84 M parameters, AdamW) on the fortunes text, global "
          "batch 16 windows of 128 bytes, 40 steps, eval off, train.threads 1, on N = 4 workers (2 for the dp 1 "
          "layout; shared memory); worker 1 "
          "kills itself (SIGKILL) as it starts step 25; time lost = from the kill until step 26 completes, as above. "
          "In place, worker 1's replacement receives its shard from its data-parallel replica (rank 3; at dp 1 from "
          "rank 0's copy) and the other workers keep their processes; restart-all resumes the checkpoint of step 20 "
          f"(written every 10 steps), so it also redoes steps 21 to 25. {a.mp_repeat} rounds, the runs of a round "
          "alternating; median (min–max).", "",
          "| layout | strategy | time lost (s) | restart-all ÷ this |", "|---|---|---:|---:|"]
    for lay, lay_title in MP_LAYOUTS:
        data = {m: [] for m, _ in MP_METHODS}
        for r in range(1, a.mp_repeat + 1):
            for m, _ in MP_METHODS:
                v, err = chorus_lost(a.raw, f"mp-{lay}-{m}-r{r}")
                if err:
                    problems.append(err)
                data[m].append(v)
        restart = [v for v in data["restart"] if v is not None]
        for m, title in MP_METHODS:
            vals = [v for v in data[m] if v is not None]
            ratio = f"{statistics.median(restart) / statistics.median(vals):.1f}x" if vals and restart else "n/a"
            md.append(f"| {lay_title} | {title} | {cell(data[m], lambda v: f'{v:.2f}')} | {ratio} |")
    md.append("")
    plain, copies = [], []
    for r in range(1, a.mp_repeat + 1):
        for kind, into in (("plain", plain), ("copies", copies)):
            v, err = wall_per_step(a.raw, f"mp-tp1-{kind}-r{r}")
            if err:
                problems.append(err)
            into.append(v)
    p = [v for v in plain if v is not None]
    c = [v for v in copies if v is not None]
    ratio = f"{statistics.median(c) / statistics.median(p):.2f}x" if p and c else "n/a"
    md += ["What the copies cost at dp 1: wall time per step of undisturbed tp 2 runs on 2 workers (first to last "
           "step record), plain against elastic (`--min 2 --restarts 1`: each worker also sends its snapshot to its "
           "neighbour after every step and keeps the neighbour's).", "",
           "| run | wall time per step (s) | ÷ plain |", "|---|---:|---:|",
           f"| plain (not elastic) | {cell(plain, lambda v: f'{v:.3f}')} | 1.00x |",
           f"| elastic, with the copies | {cell(copies, lambda v: f'{v:.3f}')} | {ratio} |", ""]
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


def inject_log(raw, name):
    """The faults bench/chaos/inject.py recorded for run NAME ([] when it wrote no log)."""
    try:
        return json.loads(read(os.path.join(raw, name + ".inject.json")) or "{}").get("faults", [])
    except ValueError:
        return []


def chaos_section(a, problems):
    clean = [final_acc(a.raw, f"chaos-clean-r{r}") for r in (1, 2, 3)]
    clean_acc = statistics.median([c for c in clean if c is not None]) if any(c is not None for c in clean) else None
    finished = errors = hangs = other = unreadable = faults = complete = 0
    ckpt_runs = ckpt_sent = ckpt_landed = prev_checked = prev_ok = 0
    diffs = []
    for s in range(1, a.chaos_runs + 1):
        name = f"chaos-{s}"
        rc = (read(os.path.join(a.raw, name + ".rc")) or "").strip()
        err = read(os.path.join(a.raw, name + ".err")) or ""
        faults += len(KILL.findall(err))
        if os.path.exists(os.path.join(a.raw, name + ".inject.json")):
            ckpt_runs += 1
            sent = [f for f in inject_log(a.raw, name) if f.get("kind") == "ckpt" and f.get("signal")]
            ckpt_sent += len(sent)
            ckpt_landed += sum(1 for f in sent if f.get("landed"))
            if not sent:
                problems.append(f"{name}: the injector killed no checkpoint writer "
                                f"({'; '.join(f.get('note', '') for f in inject_log(a.raw, name)) or 'no fault logged'})")
            for line in (read(os.path.join(a.raw, name + ".prev")) or "").splitlines():
                prev_checked += 1
                if line.startswith("ok"):
                    prev_ok += 1
                else:
                    problems.append(f"{name}: the checkpoint in place when rank 0 was killed in a write does not load ({line})")
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
          "killed (SIGKILL, 2 in 3) or stopped (SIGSTOP), `CHORUS_HEARTBEAT_TIMEOUT_MS` 3000. Undisturbed: 3 runs. "
          f"In {ckpt_runs} of them (every third) the job also checkpoints every 5 steps and `bench/chaos/inject.py` "
          "adds a fifth failure from outside: once the first checkpoint exists it polls (every 2 ms) for rank 0's "
          "next checkpoint temporary (`checkpoints/ckpt-*.pt.tmp.<pid>`) and SIGKILLs the process named in it; the "
          "kill landed inside the write when the temporary is still there once that process is dead. The "
          "checkpoint in place at that moment is hard-linked aside first and loaded after the run (`chorus "
          "checkpoint diff`). Those runs plan their 4 faults from step 20 on, after that kill.", "",
          "| measure | result |", "|---|---:|",
          f"| faults that fired (planned, from the job's stderr) | {faults} |",
          f"| kills of rank 0 while it wrote a checkpoint (injected) | {ckpt_sent} in {ckpt_runs} runs |",
          f"| of those, landed inside the write (temporary left behind) | {ckpt_landed} |",
          f"| checkpoint in place at such a kill that still loads | {prev_ok} of {prev_checked} |",
          f"| jobs finished | {finished} of {a.chaos_runs} |",
          f"| jobs ended with a clear error (fewer than --min) | {errors} |",
          f"| hangs (no exit within {a.chaos_timeout} s) | {hangs} |",
          f"| other failures | {other} |",
          f"| unreadable last checkpoints (of every run that wrote one) | {unreadable} |",
          f"| finished jobs whose trajectory has every planned step (no sample lost or repeated) | {complete} of {finished} |",
          f"| undisturbed final accuracy | {cell(clean, lambda v: f'{v:.4f}')} |",
          f"| finished jobs' final accuracy − undisturbed (points) | {cell(diffs, lambda v: f'{v:+.2f}')} |", "",
          "Each failure loses the step in flight (redone by the new generation); every step of the final trajectory "
          "takes its planned samples once. Parameter-server jobs have their own section (`ps` in run.sh).", ""]
    return md, faults + ckpt_sent


PS_MODES = ("bsp", "asp", "ssp")


def shard_ok(path):
    """None when PATH is a whole shard checkpoint (magic CPSCKPT2 or CPSCKPT3, then the SHA-256
    of the body after byte 40), else why not."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return f"cannot read it: {e.strerror}"
    if len(data) < 40 or data[:8] not in (b"CPSCKPT2", b"CPSCKPT3"):
        return f"no CPSCKPT2/3 header ({len(data)} bytes)"
    if hashlib.sha256(data[40:]).digest() != data[8:40]:
        return "its SHA-256 does not match its body"
    return None


def ps_section(a, problems):
    """The parameter-server runs ps-1..N (modes cycling bsp, asp, ssp) against ps-clean-<mode>-r<k>."""
    def mode_of(name, default):
        return (read(os.path.join(a.raw, name + ".mode")) or default).strip()

    clean = {m: [v for v in (final_acc(a.raw, f"ps-clean-{m}-r{r}") for r in range(1, a.ps_clean + 1))
                 if v is not None] for m in PS_MODES}
    rows = {m: dict(runs=0, kill=0, stop=0, ckpt=0, finished=0, errors=0, hangs=0, diffs=[]) for m in PS_MODES}
    shards = bad_shards = ckpt_sent = ckpt_landed = ckpt_resumed = prev_checked = prev_ok = 0
    lost_per_failure, unmeasured, from_logs, repeated, steady_lost, plans = [], 0, 0, 0, 0, set()
    for s in range(1, a.ps_runs + 1):
        name = f"ps-{s}"
        m = mode_of(name, PS_MODES[(s - 1) % 3])
        row = rows.setdefault(m, dict(runs=0, kill=0, stop=0, ckpt=0, finished=0, errors=0, hangs=0, diffs=[]))
        row["runs"] += 1
        rc = (read(os.path.join(a.raw, name + ".rc")) or "").strip()
        err = read(os.path.join(a.raw, name + ".err")) or ""
        faults = [f for f in inject_log(a.raw, name) if f.get("signal")]
        for f in faults:
            row[f.get("kind", "kill")] = row.get(f.get("kind", "kill"), 0) + 1
        if len(faults) < 4:
            problems.append(f"{name}: {len(faults)} of 4 faults delivered (the job ended first, or see "
                            f"{name}.inject.json)")
        if rc == "0":
            row["finished"] += 1
        elif rc in ("124", "137"):
            row["hangs"] += 1
            problems.append(f"{name} ({m}): no exit within {a.ps_timeout} s (faults: "
                            f"{', '.join(str(f.get('kind')) + ' rank ' + str(f.get('rank')) for f in faults)})")
        else:
            row["errors"] += 1
            tail = [x for x in err.splitlines() if x.strip()]
            problems.append(f"{name} ({m}): exit {rc}: {tail[-1] if tail else 'no error output'}")
        # Every final shard must be whole.
        psdir = os.path.join(a.raw, name, "ps")
        reports = {}
        for fn in sorted(os.listdir(psdir)) if os.path.isdir(psdir) else []:
            if re.fullmatch(r"server\d+\.ckpt", fn):
                shards += 1
                why = shard_ok(os.path.join(psdir, fn))
                if why:
                    bad_shards += 1
                    problems.append(f"{name}/ps/{fn}: unreadable: {why}")
            mt = re.fullmatch(r"server(\d+)\.json", fn)
            if mt:
                try:
                    reports[int(mt.group(1))] = json.loads(read(os.path.join(psdir, fn)) or "{}")
                except ValueError:
                    problems.append(f"{name}/ps/{fn} is not JSON")
        # ckpt faults: landed inside a write; the shard in place then is whole; the restarted server reloaded it.
        for f in faults:
            if f.get("kind") != "ckpt":
                continue
            ckpt_sent += 1
            ckpt_landed += 1 if f.get("landed") else 0
            mt = re.search(r"server(\d+)\.ckpt\.tmp\.", f.get("tmp") or "")
            rep = reports.get(int(mt.group(1))) if mt else None
            if rep and rep.get("resumed") and rep.get("restart", 0) >= 1:
                ckpt_resumed += 1
            else:
                problems.append(f"{name}: the server killed in its checkpoint write did not report a reload "
                                f"({'no report' if rep is None else 'resumed ' + str(rep.get('resumed'))})")
            # A kill that came after the write finished (not landed) found the new shard in place,
            # which the final-shard check covers; only a cut write must have left the old one whole.
            if f.get("prev_copy") and f.get("landed"):
                prev_checked += 1
                why = shard_ok(f["prev_copy"])
                if why is None and f.get("prev_in_place", True):
                    prev_ok += 1
                else:
                    problems.append(f"{name}: the shard in place at the ckpt kill ({f.get('prev')}): "
                                    f"{why or 'replaced while the writer was being killed'}")
        # Steps lost and repeated: the servers' per-worker push counts (a server's count starts again
        # at its restart, so only a never-restarted server's covers the run) and the worker's own
        # log (ps/worker<w>.jsonl: one record per completed step, a restarted worker appending).
        start = [e for e in records(os.path.join(a.raw, name, "metrics.jsonl")) if e.get("event") == "start"]
        planned = start[0].get("total_steps") if start else None
        if rc != "0" or planned is None or not reports:
            continue
        plans.add(planned)
        workers = sorted(int(k[1:-7]) for k in next(iter(reports.values())) if re.fullmatch(r"w\d+_pushes", k))
        whole = [rep for rep in reports.values() if rep.get("restart", 0) == 0]
        for w in workers:
            steps = [e.get("step") for e in records(os.path.join(psdir, f"worker{w}.jsonl")) if e.get("event") == "step"]
            extra = max([len(steps) - len(set(steps))] + [rep.get(f"w{w}_pushes", 0) - planned for rep in reports.values()])
            if extra > 0:
                repeated += extra
                twice = sorted(x for x in set(steps) if steps.count(x) > 1)
                problems.append(f"{name} ({m}): worker {w} did {extra} step(s) twice"
                                + (f" (steps {twice[0]}-{twice[-1]} in ps/worker{w}.jsonl)" if twice else ""))
            failures = sum(1 for f in faults if f.get("rank") == w)
            if whole:
                done = whole[0].get(f"w{w}_pushes", 0)
            elif steps:
                done, from_logs = len(set(steps)), from_logs + failures
            else:
                unmeasured += failures
                continue
            lost = planned - done
            if failures:
                lost_per_failure.append(lost / failures)
            elif lost:
                steady_lost += 1
                problems.append(f"{name}: worker {w} was never failed but trained {done} of {planned} steps")
    for s in range(1, a.ps_runs + 1):
        name = f"ps-{s}"
        m = mode_of(name, PS_MODES[(s - 1) % 3])
        acc = final_acc(a.raw, name)
        if (read(os.path.join(a.raw, name + ".rc")) or "").strip() == "0" and acc is not None and clean.get(m):
            rows[m]["diffs"].append(100 * (acc - statistics.mean(clean[m])))
    delivered = sum(r["kill"] + r["stop"] + r["ckpt"] for r in rows.values())
    md = ["## Parameter-server chaos", "",
          f"{a.ps_runs} runs of `chorus train --nproc 3 --set ps.servers=2 --set ps.restarts=4 --set "
          "ps.checkpoint_every=5` over tcp (3 workers, ranks 0-2; 2 servers, ranks 3-4; the MLP and data above, "
          "global batch 840, 2 epochs of 50 steps, eval each epoch), `ps.mode` cycling bsp, asp, ssp (s=2). "
          "`bench/chaos/inject.py` finds the job's processes in /proc (command line with its `output.dir`, "
          "environment with `CHORUS_RANK`) and delivers 4 faults per run at random times 0.3-4 s into training, "
          "each once every rank runs again plus 1 s (two servers restarting at once is a documented limit): a "
          "random rank, worker or server, gets SIGKILL (2 in 3) or SIGSTOP (the launcher kills it after "
          "`CHORUS_HEARTBEAT_TIMEOUT_MS` 3000 and restarts it). In about a third of the runs one fault is a "
          "\"ckpt\" fault: it polls every 2 ms for a shard temporary `ps/server<s>.ckpt.tmp.<pid>` and SIGKILLs "
          f"that server. Undisturbed: {a.ps_clean} run(s) per mode. Hangs: no exit within {a.ps_timeout} s.", "",
          "| mode | runs | faults delivered (kill / stop / ckpt) | jobs finished | ended with an error | hangs |",
          "|---|---:|---:|---:|---:|---:|"]
    for m, r in rows.items():
        md.append(f"| {m} | {r['runs']} | {r['kill'] + r['stop'] + r['ckpt']} ({r['kill']} / {r['stop']} / {r['ckpt']}) | "
                  f"{r['finished']} | {r['errors']} | {r['hangs']} |")
    total_lost = cell(lost_per_failure, lambda v: f"{v:.1f}")
    md += ["", "| measure | result |", "|---|---:|",
           f"| faults delivered | {delivered} |",
           f"| unreadable final shard checkpoints (CPSCKPT magic and SHA-256 checked here) | {bad_shards} of {shards} |",
           f"| ckpt faults: server killed while it wrote its shard | {ckpt_sent} |",
           f"| of those, landed inside the write (temporary left behind) | {ckpt_landed} |",
           f"| shard in place at the kill still whole (magic, SHA-256) | {prev_ok} of {prev_checked} |",
           f"| killed server restarted and reloaded its shard (`resumed`) | {ckpt_resumed} of {ckpt_sent} |",
           f"| steps lost per worker failure, median (min–max) | {total_lost} |",
           f"| of the worker failures, measured from the worker's log (both servers restarted) | {from_logs} |",
           f"| worker failures not measured | {unmeasured} |",
           f"| workers never failed that lost steps | {steady_lost} |",
           f"| steps done twice by a worker (its log, its servers' counts) | {repeated} |", "",
           f"Steps lost: planned steps per worker ({', '.join(map(str, sorted(plans))) or 'n/a'}) minus the pushes of that worker counted by a server that "
           "was never restarted in that run (a restarted server counts from its restart), or, when both were, "
           "minus the distinct steps in the worker's log, divided by that worker's failures in the run. Steps "
           "done twice: step records in `ps/worker<w>.jsonl` (a restarted worker appends to it) minus distinct "
           "steps, or a server counting more pushes of a worker than its planned steps. A restarted worker rejoins at the step the servers counted for it "
           "(its own pushes: each push carries the worker's count and shard checkpoints keep them), so it skips "
           "none of its steps; a failure loses only the step in flight. Behind the others, it finishes its last "
           "steps after them (bsp, asp), or holds them back until it is within s (ssp).",
           "", "| mode | undisturbed final accuracy, mean (min–max) | finished runs' accuracy − undisturbed (points), mean | min–max |",
           "|---|---:|---:|---:|"]
    verdicts = []
    for m, r in rows.items():
        base = (f"{statistics.mean(clean[m]):.4f} ({min(clean[m]):.4f}–{max(clean[m]):.4f}, {len(clean[m])} run{'' if len(clean[m]) == 1 else 's'})"
                if clean.get(m) else "n/a")
        mean = f"{statistics.mean(r['diffs']):+.2f}" if r["diffs"] else "n/a"
        span = f"{min(r['diffs']):+.2f}–{max(r['diffs']):+.2f}" if r["diffs"] else "n/a"
        md.append(f"| {m} | {base} | {mean} | {span} |")
        if r["diffs"]:
            verdicts.append((m, statistics.mean(r["diffs"]), min(r["diffs"])))
    hangs = sum(r["hangs"] for r in rows.values())
    md += ["", f"- Target: no hangs: **{'met' if hangs == 0 else 'not met'}** ({hangs}).",
           f"- Target: no unreadable checkpoints: **{'met' if bad_shards == 0 and prev_ok == prev_checked else 'not met'}** "
           f"({bad_shards} final shards, {prev_checked - prev_ok} shards left by a ckpt kill).",
           f"- Target: no sample repeated: **{'met' if repeated == 0 else 'not met'}** ({repeated} steps done twice)."]
    if verdicts:
        worst = max(abs(v) for _, v, _ in verdicts)
        below = [f"{m} {lo:+.2f}" for m, _, lo in verdicts if lo < -0.5]
        md.append(f"- Target: final accuracy within 0.5 point of undisturbed (mean per mode): "
                  f"**{'met' if worst <= 0.5 else 'not met'}** (largest mean difference {worst:.2f} point"
                  + (f"; single runs below −0.5: {', '.join(below)}" if below else "") + ").")
    else:
        md.append("- Target: final accuracy within 0.5 point of undisturbed: **not measured** (no finished run "
                  "with an undisturbed run of its mode).")
    md.append("")
    return md, delivered


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--raw", required=True)
    p.add_argument("--lost-repeat", type=int, default=3)
    p.add_argument("--worlds-repeat", type=int, default=3)
    p.add_argument("--chaos-runs", type=int, default=0)
    p.add_argument("--chaos-timeout", type=int, default=300)
    p.add_argument("--ps-runs", type=int, default=0)
    p.add_argument("--ps-clean", type=int, default=1)
    p.add_argument("--ps-timeout", type=int, default=180)
    p.add_argument("--mp-repeat", type=int, default=3)
    p.add_argument("--sections", nargs="*", default=["lost", "worlds", "chaos", "ps"])
    p.add_argument("--command", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--src", default=os.path.dirname(os.path.dirname(HERE)))
    a = p.parse_args()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    mlp = any(x in a.sections for x in ("lost", "worlds", "chaos", "ps"))
    md = ["# Fault tolerance: time lost per failure, recovery against world size, chaos" if mlp else
          "# Fault tolerance of tensor- and pipeline-parallel jobs: time lost per failure", "",
          f"Written by `{a.command}` on {now} at commit {revision(a.src)}. Every number below is computed from the "
          "raw outputs that run collected; rerun the command to refresh this page instead of editing it.", ""]
    if mlp:
        md += ["The job: the MLP of bench/ddp (784-512-256-10, SGD momentum 0.9) on the first 42000 Fashion-MNIST "
               "samples, global batch 840, train.threads 1, every worker a process on this 2-core machine (shared "
               "memory); chorus's elastic runs use `CHORUS_HEARTBEAT_TIMEOUT_MS` 3000 and `CHORUS_TIMEOUT_MS` "
               "30000.", ""]
    md += [f"loadavg: {' / '.join((read(os.path.join(a.raw, 'loadavg.txt')) or '').split(chr(10)))}", ""]
    problems = []
    if "lost" in a.sections:
        md += lost_section(a, problems)
    if "worlds" in a.sections:
        md += worlds_section(a, problems)
    if "mp" in a.sections:
        md += mp_section(a, problems)
    total = []
    if "chaos" in a.sections and a.chaos_runs > 0:
        part, n = chaos_section(a, problems)
        md += part
        total.append(("data-parallel", n))
    if "ps" in a.sections and a.ps_runs > 0:
        part, n = ps_section(a, problems)
        md += part
        total.append(("parameter-server", n))
    if total:
        md += [f"Failures injected in all: {sum(n for _, n in total)} "
               f"({', '.join(f'{n} in the {k} runs' for k, n in total)}); the issue asks for at least 100.", ""]
    if problems:
        md += ["## Runs without a result", ""] + [f"- {x}" for x in problems] + [""]
    with open(a.out, "w") as f:
        f.write("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
