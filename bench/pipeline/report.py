"""Writes bench/results/pipeline.md from the raw outputs of bench/pipeline/run.sh.

  report.py torch-args CONFIG     the GPT and optimizer of a chorus config as pipe_torch.py flags
  report.py report --raw DIR --repeats N --command CMD --out PAGE --sections S... [--quick]

Every number in the page is computed from RAW/<run>/metrics.jsonl, RAW/<run>/trace.json (through
bench/pipeline/timeline.py) and RAW/speed-torchpipe-r<k>.json. A run that failed is named, with
the end of its stderr. Standard library only.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "common"))
from runs import (SOURCE_DIR, fmt, fmt_spread, is_number, jsonl_records, median_spread, page_header, read,  # noqa: E402
                  why_failed, write_page)

SCHEDULES = ("gpipe", "1f1b", "interleaved", "zb-h1")
CHUNKS = 2  # the interleaved rows' model chunks per stage (parallel.virtual_stages)


def torch_args(config_path):
    with open(config_path, "rb") as f:
        cfg = tomllib.load(f)
    m, o, t = cfg.get("model", {}), cfg.get("optim", {}), cfg.get("train", {})
    flags = {"--layers": m.get("layers", 4), "--heads": m.get("heads", 4), "--embed": m.get("embed", 128),
             "--context": m.get("context", 128), "--batch": t.get("batch_size", 32), "--seed": t.get("seed", 0),
             "--lr": o.get("lr", 1e-3), "--beta1": o.get("beta1", 0.9), "--beta2": o.get("beta2", 0.999),
             "--eps": o.get("eps", 1e-8), "--weight-decay": o.get("weight_decay", 0.0)}
    for k, v in flags.items():
        print(k)
        print(v)
    return 0


def run_model(raw, name):
    """The [model] and batch size the run `name` trained, from the config.toml chorus wrote into its
    output folder; None where that run left none."""
    path = os.path.join(raw, name, "config.toml")
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    m = dict(cfg.get("model", {}))
    m["batch_size"] = cfg.get("train", {}).get("batch_size")
    return m


def theory(name, p, m):
    if name in ("gpipe", "1f1b"):
        return (p - 1) / (m + p - 1)
    if name == "interleaved":
        return (p - 1) / (CHUNKS * m + p - 1)
    if name == "zb-h1":
        return (p - 1) / (3 * m + p - 1)
    raise ValueError(name)


def simulate(raw, name, p, m, op_ms):
    """`chorus pipeline show --costs F,B,W --json` of the schedule with the trace's mean op times
    (F forward; B the input-gradient half, or the whole backward where it is not split; W the
    weight-gradient half, or 0): (result dict, None) or (None, why)."""
    f = op_ms.get("forward")
    b = op_ms.get("backward input", op_ms.get("backward"))
    w = op_ms.get("backward weight", 0.0)
    if not is_number(f) or not is_number(b):
        return None, f"{name}: the trace has no forward or backward spans"
    cmd = [os.path.join(raw, "chorus"), "pipeline", "show", "--schedule", name, "--stages", str(p),
           "--micro-batches", str(m), "--costs", f"{f},{b},{w}", "--json"]
    if name == "interleaved":
        cmd += ["--chunks", str(CHUNKS)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return json.loads(r.stdout.strip().splitlines()[-1]), None
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        return None, f"{name}: chorus pipeline show --costs did not run: {e}"


def records(raw, name, event):
    recs, why = jsonl_records(raw, name)
    if recs is None:
        return None, why
    return [r for r in recs if r.get("event") == event], None


def trace_bubble(raw, name, last, svg=None, title=None):
    """timeline.py's measurement of RAW/NAME/trace.json over the last `last` steps, or (None, why)."""
    cmd = [sys.executable, os.path.join(HERE, "timeline.py"), os.path.join(raw, name, "trace.json"), "--last", str(last)]
    if svg:
        cmd += ["--svg", svg, "--title", title or name]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"{name}: timeline.py did not run: {e}"
    if p.returncode != 0:
        return None, f"{name}: timeline.py failed: {p.stderr.strip()[-300:]}"
    try:
        return json.loads(p.stdout.strip().splitlines()[-1]), None
    except (ValueError, IndexError):
        return None, f"{name}: timeline.py printed no JSON"


def step_field(steps, key):
    """The values of `key` over the step records."""
    return [s[key] for s in steps if is_number(s.get(key))]


def stage_mean(steps, key, p):
    """The mean over stages 0..p-1 of each stage's mean `<key><s>` over the step records, or None
    when a stage has no such field."""
    per = []
    for st in range(p):
        vals = step_field(steps, f"{key}{st}")
        if not vals:
            return None
        per.append(sum(vals) / len(vals))
    return sum(per) / len(per)


def bubble_sections(raw, machine, problems, quick, repeats):
    stages = [int(x) for x in machine.get("stages", "2").split()]
    micros = [int(x) for x in machine.get("micro-batches", "4").split()]
    steps = int(machine.get("bubble steps", "6").strip())
    last = max(1, steps - 2)
    model = run_model(raw, f"bubble-gpipe-p{stages[0]}-m{micros[0]}-r1") or {}
    shape = (f"{model.get('layers', '?')} blocks, embed {model.get('embed', '?')}, {model.get('heads', '?')} heads, "
             f"context {model.get('context', '?')}, batch {model.get('batch_size', '?')} windows")
    out = ["## 1. Bubble: measured against theory\n",
           f"The GPT of bench/pipeline/gpt.toml ({shape}, untied head; as its first run's config.toml "
           f"says) at pp stages with m micro-batches, {steps} steps per run, each worker 1 torch thread; "
           f"interleaved with {CHUNKS} model chunks per stage. It is wide and short so that the linear layers "
           f"dominate and a forward, an input-gradient and a weight-gradient pass cost about the same, as the "
           f"formulas assume (the simulated column gives the measured F, B and W). Balanced stages, by fixed "
           f"counts: at pp = 2 the blocks 3 per stage, the embedding with the first and the head with the last "
           f"(`{machine.get('pp 2', '?').strip()}`); at pp = 4 the model has 8 blocks and every stage 2 of "
           f"them (`{machine.get('pp 4', '?').strip()}`; 6 blocks cannot be cut into 4 equal stages). A split "
           f"by measured time (`parallel.balance = \"time\"`) is measured on these 2 shared cores and landed "
           f"elsewhere from run to run, so the bubble rows do not use it (section 5 measures it). "
           f"**Trace**: each stage's idle share of the step "
           f"(1 − its forward and backward time / the step's span from the first stage's first action to the last "
           f"stage's last), from the `--trace` spans by bench/pipeline/timeline.py, the median over the last "
           f"{last} steps, then the mean over the stages. **Executor**: the step records' `bubble_stage<s>` (each "
           f"stage's time blocked in receives and sends / its pipeline time), mean over the same steps and the "
           f"stages. **Theory**: (p − 1)/(m + p − 1) for GPipe and 1F1B, (p − 1)/(vm + p − 1) for interleaved, "
           f"(p − 1)/(3m + p − 1) for ZB-H1 (equal stages, backward = 2 forwards split into equal B and W halves, "
           f"no transfer time). **Simulated**: the same schedule simulated by chorus's checker with the op times "
           f"this run's trace measured (`chorus pipeline show --costs F,B,W`, F, B and W the mean forward, "
           f"input-gradient and weight-gradient spans over the stages and the measured steps; where the backward "
           f"is not split, B is the whole backward and W = 0), still with equal stages and free transfers. The "
           f"formula assumes F = B = W; when the halves differ, the simulation is the bubble the schedule itself "
           f"implies, and the trace's distance from it is what the implementation adds (transfers, the loss, "
           f"uneven stages, noise). **Replayed**: the step's own compute spans, each stage's in the order it ran "
           f"them and each with the duration it took, replayed with free transfers (an action starts when its "
           f"stage is free and the action it depends on has ended; timeline.py's `replay`), median over the "
           f"same steps, mean over the stages. Replayed − theory is what the measured op times add (stages that "
           f"are not quite equal, and op-to-op variation, which grows when stages share a core); trace − replayed "
           f"is what the transfers, the waits and the executor add. **No free core**: the step records' "
           f"`cpu_wait_stage<s>`, the share of each stage's pipeline time its thread was runnable but had no "
           f"core (the kernel's run-queue time, /proc/thread-self/schedstat), mean over the same steps and the "
           f"stages: 0 when every stage has a core of its own.\n"]
    if 4 in stages:
        out.append("pp = 4 runs 4 workers on this machine's 2 cores: two stages share a core, so a stage also waits "
                   "for the CPU. The trace counts that as busy time stretched, unevenly from op to op, and a woken "
                   "receiver waits for a core before it can go on. Those rows measure the schedule on an "
                   "oversubscribed machine, not the schedule alone; the replayed column shows how much of the "
                   "distance to theory the op times alone explain.\n")
    out.append(f"Each configuration ran {repeats} time(s), all of them alternating within a repetition; a cell is "
               f"the median over the repetitions (min–max), and the differences are between medians. Per stage: "
               f"each stage's median.\n")
    out.append("| pp | m | schedule | theory | simulated (op times in ms) | trace | executor | replayed "
               "| trace − theory | trace − simulated | replayed − theory | trace − replayed | no free core |")
    out.append("|---:|---:|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    verdict = {}
    sim_verdict = {}
    replay_verdict = {}
    mem_rows = []
    for p in stages:
        for m in micros:
            for s in SCHEDULES:
                th = theory(s, p, m)
                traces, execs, sims, per_stage, costs, replays, cpu_waits = [], [], [], [], [], [], []
                for r in range(1, repeats + 1):
                    name = f"bubble-{s}-p{p}-m{m}-r{r}"
                    steps_recs, why = records(raw, name, "step")
                    if steps_recs is None:
                        problems.append(why)
                        continue
                    svg = None
                    if r == 1 and p == 2 and m == 8 and s in ("1f1b", "zb-h1") and not quick:
                        svg = os.path.join(SOURCE_DIR, "bench", "results", f"pipeline-{s}.svg")
                    tb, why = trace_bubble(raw, name, last, svg, f"chorus {s}, pp = {p}, {m} micro-batches: one step")
                    if tb is None:
                        problems.append(why)
                        continue
                    sim, why = simulate(raw, s, p, m, tb.get("op_ms", {}))
                    if sim is None:
                        problems.append(why)
                    else:
                        sims.append(sim["mean_bubble"])
                        costs.append(sim["costs"])
                    traces.append(sum(tb["bubble"]) / len(tb["bubble"]))
                    if tb.get("replay"):
                        replays.append(sum(tb["replay"]) / len(tb["replay"]))
                    else:
                        problems.append(f"{name}: timeline.py could not replay its steps")
                    per_stage.append(tb["bubble"])
                    for key, into in (("bubble_stage", execs), ("cpu_wait_stage", cpu_waits)):
                        mean = stage_mean(steps_recs[-last:], key, p)
                        if mean is not None:
                            into.append(mean)
                    peaks = [steps_recs[-1].get(f"peak_stored_stage{st}") for st in range(p)]
                    mem_rows.append((p, m, s, r, peaks, sim["peak_activations"] if sim else None))
                if not traces:
                    out.append(f"| {p} | {m} | {s} | {100 * th:.1f}% | | no result | | | | | | | |")
                    continue
                def pct(values):
                    """"median% (min–max)" of fractions, in percent; the median alone for one value."""
                    med, lo, hi = median_spread([100 * x for x in values])
                    if med is None:
                        return "—"
                    return f"{med:.1f}%" if len(values) == 1 else f"{med:.1f}% ({lo:.1f}–{hi:.1f})"

                med_trace = median_spread(traces)[0]
                diff = 100 * (med_trace - th)
                verdict.setdefault(p, []).append(abs(diff))
                per = ", ".join(f"{100 * median_spread([row[i] for row in per_stage])[0]:.0f}" for i in range(p))
                sim_cell, sim_diff = "—", "—"
                if sims:
                    med_sim = median_spread(sims)[0]
                    mid = costs[sims.index(sorted(sims)[(len(sims) - 1) // 2])]
                    sim_cell = f"{pct(sims)}; F, B, W {', '.join(f'{c:.0f}' for c in mid)}"
                    d = 100 * (med_trace - med_sim)
                    sim_diff = f"{d:+.1f}"
                    sim_verdict.setdefault(p, []).append(abs(d))
                rep_cell, rep_theory, trace_rep = "—", "—", "—"
                if replays:
                    med_rep = median_spread(replays)[0]
                    rep_cell = pct(replays)
                    rep_theory = f"{100 * (med_rep - th):+.1f}"
                    trace_rep = f"{100 * (med_trace - med_rep):+.1f}"
                    replay_verdict.setdefault(p, []).append((100 * (med_rep - th), 100 * (med_trace - med_rep)))
                out.append(f"| {p} | {m} | {s} | {100 * th:.1f}% | {sim_cell} | {pct(traces)}; per stage {per} | "
                           f"{pct(execs)} | {rep_cell} | {diff:+.1f} | {sim_diff} | {rep_theory} | {trace_rep} | "
                           f"{pct(cpu_waits)} |")
    out.append("")
    for p, diffs in verdict.items():
        worst = max(diffs)
        holds = "holds" if worst <= 5 else "does not hold"
        out.append(f"**pp = {p}: every row within 5 points of theory (largest difference {worst:.1f} points): "
                   f"{holds}.**\n")
    for p, diffs in sim_verdict.items():
        worst = max(diffs)
        holds = "holds" if worst <= 5 else "does not hold"
        out.append(f"pp = {p}: every row within 5 points of its simulation with the measured op times (largest "
                   f"difference {worst:.1f} points): {holds}.\n")
    for p, pairs in replay_verdict.items():
        ops = [a for a, _ in pairs]
        rest = [b for _, b in pairs]
        out.append(f"pp = {p}, where the distance to theory comes from: the measured op times add "
                   f"{min(ops):+.1f} to {max(ops):+.1f} points (replayed − theory, median {median_spread(ops)[0]:+.1f}); "
                   f"the transfers, waits and executor {min(rest):+.1f} to {max(rest):+.1f} (trace − replayed, median "
                   f"{median_spread(rest)[0]:+.1f}).\n")
    if not quick:
        out.append("One step of 1F1B and of ZB-H1 at pp = 2 with 8 micro-batches, from the trace "
                   "(bench/pipeline/timeline.py):\n")
        out.append("![1F1B timeline](pipeline-1f1b.svg)\n")
        out.append("![ZB-H1 timeline](pipeline-zb-h1.svg)\n")

    out.append("## 2. Peak stored activations\n")
    out.append("The same runs: each stage's `peak_stored_stage<s>`, the most micro-batches whose forward state it "
               "held at once, measured by the executor. Expected: GPipe m on every stage; 1F1B min(p − r, m) on "
               "stage r; ZB-H1 keeps a micro-batch's (smaller) state until its W, so up to r + 1 more; interleaved "
               "counts (chunk, micro-batch) pairs and must equal the checker's simulation of its order "
               "(`chorus pipeline show --json`, peak_activations). Every repetition is checked; the table shows "
               "the first.\n")
    out.append("| pp | m | schedule | per stage | expected |")
    out.append("|---:|---:|---|---|---|")
    ok = True
    for p, m, s, rep, peaks, simulated in mem_rows:
        if s == "interleaved":
            want = simulated if simulated else ["?"] * p
            good = simulated is not None and peaks == simulated
        elif s == "gpipe":
            want = [m] * p
            good = peaks == want
        elif s == "1f1b":
            want = [min(p - r, m) for r in range(p)]
            good = peaks == want
        else:
            want = [f"{min(p - r, m)}..{min(p - r, m) + r + 1}" for r in range(p)]
            good = all(is_number(v) and min(p - r, m) <= v <= min(p - r, m) + r + 1 for r, v in enumerate(peaks))
        ok = ok and good
        # Every repetition is checked; the table shows the first, and any repetition that differs.
        if rep == 1 or not good:
            label = s if rep == 1 else f"{s} (repetition {rep})"
            out.append(f"| {p} | {m} | {label} | {', '.join(str(v) for v in peaks)} | "
                       f"{', '.join(str(w) for w in want)} |")
    out.append("")
    out.append(f"**GPipe stores m micro-batches, 1F1B at most p − r and interleaved what its order implies: "
               f"{'holds' if ok else 'does not hold'}.**\n")
    return out


def speed_section(raw, repeats, problems):
    out = ["## 3. Throughput at pp = 2\n",
           "The same GPT at pp = 2 (2 workers × 1 torch thread, shared-memory transport), 8 micro-batches per "
           "step, tokens/s = steps × batch × context / the training time of the slowest worker (summary "
           "record). **none** is the layer-wise split without micro-batches (the no-pipelining baseline). "
           "**PyTorch Pipe** is torch.distributed.pipeline.sync.Pipe (GPipe) in one process with 2 torch "
           "threads, cut where chorus cut (bench/pipeline/pipe_torch.py). On a CPU-only machine both of its "
           "partitions sit on the one \"cpu\" device, and Pipe runs one worker thread per device, so its stages "
           "take turns: it cannot overlap them here, and its 2 torch threads share each matrix multiply instead. "
           "**pipedream** and **2bw** run as PipeDream's stream (parallel.async_flush = \"never\": micro-batches in "
           "flight at a step's end finish in the next step, and the pipeline drains once, at the run's end); "
           "**pipedream-step** drains it at the end of every step (async_flush = \"step\"), so each step fills and "
           "drains it as the synchronous schedules do. Each row ran "
           f"{repeats} time(s), all rows alternating within a repetition; a cell is the median (min–max).\n"]
    rows = ["none", "gpipe", "1f1b", "interleaved", "zb-h1", "pipedream", "2bw", "pipedream-step"]
    vals = {}
    for s in rows:
        v = []
        for r in range(1, repeats + 1):
            summ, why = records(raw, f"speed-{s}-r{r}", "summary")
            if summ is None or not summ or not is_number(summ[-1].get("tokens_per_s")):
                problems.append(why or f"speed-{s}-r{r}: no summary with tokens_per_s")
                continue
            v.append(summ[-1]["tokens_per_s"])
        vals[s] = v
    tv, terr = [], None
    for r in range(1, repeats + 1):
        path = os.path.join(raw, f"speed-torchpipe-r{r}.json")
        try:
            with open(path, encoding="utf-8") as f:
                res = json.loads(f.read().strip().splitlines()[-1])
        except (OSError, ValueError, IndexError):
            problems.append(f"speed-torchpipe-r{r}: no result ({why_failed(raw, f'speed-torchpipe-r{r}')})")
            continue
        if "error" in res:
            terr = res["error"]
        elif is_number(res.get("tokens_per_s")):
            tv.append(res["tokens_per_s"])
    base = median_spread(vals.get("none", []))[0]
    ofob = median_spread(vals.get("1f1b", []))[0]
    tmed = median_spread(tv)[0]
    out.append("| schedule | tokens/s | vs none | vs 1F1B | vs PyTorch Pipe |")
    out.append("|---|---:|---:|---:|---:|")

    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else "—"

    for s in rows:
        med = median_spread(vals[s])[0]
        out.append(f"| {s} | {fmt_spread(vals[s], ',.0f')} | {ratio(med, base)} | {ratio(med, ofob)} | "
                   f"{ratio(med, tmed)} |")
    if terr:
        out.append(f"| PyTorch Pipe | failed: `{terr}` | | | |")
    else:
        out.append(f"| PyTorch Pipe (2 threads) | {fmt_spread(tv, ',.0f')} | {ratio(tmed, base)} | {ratio(tmed, ofob)} | |")
    out.append("")
    return out


def loss_curve(steps, batch):
    """[(training seconds so far, window mean loss)] from the step records."""
    t, out, prev = 0.0, [], 0
    for s in steps:
        n = s["step"] - prev
        prev = s["step"]
        if is_number(s.get("samples_per_s")) and s["samples_per_s"] > 0:
            t += n * batch / s["samples_per_s"]
        out.append((t, s.get("loss")))
    return out


def async_section(raw, problems):
    out = ["## 4. Asynchronous schedules: quality and time to a loss\n"]
    names = [("1f1b", "async-1f1b"), ("pipedream", "async-pipedream"),
             ("pipedream, drained every step", "async-pipedream-step"),
             ("pipedream, no weight stashing", "async-pipedream-nostash"),
             ("pipedream, vertical sync", "async-pipedream-vsync"), ("2bw (update every 2)", "async-2bw")]
    cfg_steps = None
    res = {}
    for label, name in names:
        steps, why = records(raw, name, "step")
        evals, _ = records(raw, name, "eval")
        summ, _ = records(raw, name, "summary")
        if steps is None or not steps:
            problems.append(why or f"{name}: no step records")
            continue
        res[label] = (steps, evals or [], summ or [])
        cfg_steps = steps[-1]["step"]
    batch = 32
    out.append(f"The GPT at pp = 2, 8 micro-batches per step, {cfg_steps} steps (AdamW, lr 1e-3 with warmup and "
               "cosine decay), validation on 256 windows at the end. pipedream and 2bw update each stage's weights "
               "inside the step (after every micro-batch's backward; 2bw after every 2); 1f1b once per step. pipedream and 2bw "
               "run as a stream (no flush between steps; drained before the evaluation at the end); \"drained every "
               "step\" flushes the pipeline at each step's end (parallel.async_flush = \"step\"). At the same "
               "learning rate pipedream therefore applies 8 updates per step, each from one micro-batch of 4 windows, "
               "where 1f1b applies one from the whole batch of 32: the table compares the schedules as a user would "
               "run them, not at equal update counts. "
               "**Target**: 1f1b's last logged training loss (the mean over its last 5 steps); **time to target**: "
               "the training time until a run's logged loss first reaches it.\n")
    if "1f1b" not in res:
        out.append("No 1f1b run: no target.\n")
        return out
    target = res["1f1b"][0][-1].get("loss")
    out.append(f"Target loss: {fmt(target, '.4f')} nats/byte.\n")
    out.append("| schedule | val bits per byte | final train loss | time to target | training time |")
    out.append("|---|---:|---:|---:|---:|")
    for label, _ in names:
        if label not in res:
            out.append(f"| {label} | no result | | | |")
            continue
        steps, evals, summ = res[label]
        bpb = evals[-1].get("val_bpb") if evals else None
        curve = loss_curve(steps, batch)
        reach = next((t for t, l in curve if is_number(l) and is_number(target) and l <= target), None)
        total = curve[-1][0] if curve else None
        out.append(f"| {label} | {fmt(bpb, '.4f')} | {fmt(steps[-1].get('loss'), '.4f')} | "
                   f"{'not reached' if reach is None else f'{reach:.1f} s'} | {fmt(total, '.1f')} s |")
    out.append("")
    return out


def partition_section(raw, repeats, problems, machine):
    out = ["## 5. Auto partition against an even split\n",
           "bench/pipeline/heavy.toml: a GPT over long windows (context 1024, embed 64, 6 blocks, batch 8) at "
           "pp = 2 with 1F1B over 8 micro-batches. Its position embedding holds more parameters than a block but "
           "costs almost no time, while each block attends over 1024 positions. **even**: "
           "`parallel.partition = [4, 4]` (the embedding and 3 blocks, then 3 blocks and the head); **params**: "
           "`parallel.balance = \"params\"` (the default: the largest stage by parameter count is smallest); "
           "**time**: `parallel.balance = \"time\"` (worker 0 profiles every layer, the split minimizes the "
           "slowest stage). Busy: each stage's forward and backward time per step from the trace (median over "
           f"the last 6 steps). Each ran {repeats} time(s), the three alternating; a cell is the median "
           "(min–max). At this byte vocabulary the head costs less than a block, so no GPT here has a head "
           "heavy enough to unbalance the even split: the even split and the timed one coincide, and the "
           "comparison that shows the planner's worth is against the parameter-count split.\n",
           "| split | layers per stage | busy stage 0 (ms) | busy stage 1 (ms) | slowest (ms) | tokens/s |",
           "|---|---|---:|---:|---:|---:|"]
    meds = {}
    for kind in ("even", "params", "time"):
        tok, b0, b1, slow, part = [], [], [], [], None
        for r in range(1, repeats + 1):
            name = f"partition-{kind}-r{r}"
            summ, why = records(raw, name, "summary")
            start, _ = records(raw, name, "start")
            if summ is None or not summ or not is_number(summ[-1].get("tokens_per_s")):
                problems.append(why or f"{name}: no summary with tokens_per_s")
                continue
            tok.append(summ[-1]["tokens_per_s"])
            if start:
                part = start[0].get("pp_partition")
            tb, why = trace_bubble(raw, name, 6)
            if tb is None:
                problems.append(why)
                continue
            busy = tb.get("busy_s", [])
            if len(busy) == 2:
                b0.append(1000 * busy[0])
                b1.append(1000 * busy[1])
                slow.append(1000 * max(busy))
        meds[kind] = (median_spread(tok)[0], median_spread(slow)[0])
        out.append(f"| {kind} | {part} | {fmt_spread(b0, ',.0f')} | {fmt_spread(b1, ',.0f')} | "
                   f"{fmt_spread(slow, ',.0f')} | {fmt_spread(tok, ',.0f')} |")
    out.append("")
    (tt, st) = meds.get("time", (None, None))
    for kind in ("even", "params"):
        tk, sk = meds.get(kind, (None, None))
        if tt and tk and st and sk:
            out.append(f"- balance = \"time\" against {kind}: slowest stage {st / sk:.2f}x the time, tokens/s "
                       f"{tt / tk:.2f}x.")
    out.append("")
    out += split_stability(raw, machine, problems)
    return out


def split_stability(raw, machine, problems):
    """The splits balance = "time" chose in the one-step split-r<t> runs (gpt.toml, interleaved, 16
    micro-batches): its blocks are identical, so only the even split is right."""
    trials = int(machine.get("split trials", "0").strip() or 0)
    if trials < 1:
        return []
    chosen = {}
    for t in range(1, trials + 1):
        start, why = records(raw, f"split-r{t}", "start")
        if not start or not start[0].get("pp_partition"):
            problems.append(why or f"split-r{t}: no start record with pp_partition")
            continue
        part = start[0]["pp_partition"]
        chosen[part] = chosen.get(part, 0) + 1
    model = run_model(raw, "split-r1") or {}
    # The even split of the layers the runs split: every count the mean count.
    counts = json.loads(next(iter(chosen))) if chosen else []
    even = "[" + ", ".join([str(sum(counts) // len(counts))] * len(counts)) + "]" if counts else "?"
    out = ["**The profile's own noise.** bench/pipeline/gpt.toml ({} identical blocks) at pp = 2, interleaved "
           "with 2 chunks per stage over 16 micro-batches (the shortest passes here), `parallel.balance = "
           "\"time\"`, {} one-step runs: worker 0 profiles the layers each time, and with identical blocks the "
           "even split {} is the right one.\n".format(model.get("layers", "?"), trials, even),
           "| split chosen | runs |", "|---|---:|"]
    for part, n in sorted(chosen.items(), key=lambda kv: -kv[1]):
        out.append(f"| {part} | {n} |")
    out.append("")
    ok = chosen.get(even, 0) == trials
    out.append(f"**balance = \"time\" splits identical blocks evenly in every run ({chosen.get(even, 0)} of "
               f"{trials}): {'holds' if ok else 'does not hold'}.**\n")
    return out


def report(args):
    problems = []
    title = "Pipeline parallelism: bubble, memory, throughput and the asynchronous schedules"
    out, machine = page_header(title + (" (quick smoke run)" if args.quick else ""), args.command, args.raw)
    out.append(f"- chorus: every worker 1 torch thread, the shared-memory transport between stages; planned "
               f"{machine.get('planned', '?').strip()}, actual {machine.get('took', '?').strip()}")
    out.append("")
    if args.quick:
        out.append("**Quick smoke run**: few steps, pp = 2 and m = 4 only, one repetition: the numbers only show "
                   "that the pipeline works; the full run writes bench/results/pipeline.md.\n")
    out.append("## Commands\n")
    out.append("```")
    out.append(args.command)
    seen = set()
    cmds = [f for f in os.listdir(args.raw) if f.endswith(".cmd")] if os.path.isdir(args.raw) else []
    for f in sorted(cmds, key=lambda f: (os.path.getmtime(os.path.join(args.raw, f)), f)):
        key = re.sub(r"-r\d+$", "", f[:-4])
        if key in seen:
            continue
        seen.add(key)
        out.append(read(os.path.join(args.raw, f)).strip())
    out.append("```\n")
    machine = {k.strip(): v for k, v in machine.items()}
    if "bubble" in args.sections:
        out += bubble_sections(args.raw, machine, problems, args.quick, args.repeats)
    if "speed" in args.sections:
        out += speed_section(args.raw, args.repeats, problems)
    if "async" in args.sections:
        out += async_section(args.raw, problems)
    if "partition" in args.sections:
        out += partition_section(args.raw, args.repeats, problems, machine)
    out.append("## Not measured here\n")
    out.append("- 3D parallelism (tp × pp × dp): `make test` checks it against one process; no benchmark row yet.\n")
    if problems:
        out.append("## Runs without a result, and checks that failed\n")
        for prob in problems:
            out.append(f"- {prob}")
        out.append(f"\nRaw outputs: {args.raw}\n")
    return write_page(args.out, out, problems)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("torch-args")
    t.add_argument("config")
    r = sub.add_parser("report")
    r.add_argument("--raw", required=True)
    r.add_argument("--repeats", type=int, default=1)
    r.add_argument("--command", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--sections", nargs="+", default=["bubble", "speed", "async", "partition"])
    r.add_argument("--quick", action="store_true")
    a = p.parse_args()
    if a.cmd == "torch-args":
        return torch_args(a.config)
    return report(a)


if __name__ == "__main__":
    sys.exit(main())
