"""The model-parallel benchmark's two helpers for bench/model-parallel/run.sh.

  report.py torch-args CONFIG
      prints, one per line, the bench/model-parallel/gpt_torch.py arguments that train the GPT
      of the chorus config CONFIG (model, batch, seed, optimizer, schedule, validation windows),
      so the PyTorch peer can never drift from the config chorus runs.

  report.py report --raw DIR --repeats R --command CMD --out FILE [--quick] [--src DIR]
                   [--sections memory oom comm speed bpb]
      assembles bench/results/model-parallel.md from the raw outputs run.sh collects in DIR:

        NAME.cmd / .out / .err / .rc   each run's command, stdout, stderr and exit status
        NAME/metrics.jsonl             a chorus run's records: "start" (tp, dp, pp,
                                       param_bytes_sharded, param_bytes_replicated,
                                       optimizer_bytes), "step", "eval" (val_loss, val_bpb) and,
                                       last, "summary" (tokens_per_s, samples_per_s,
                                       peak_rss_mb_max, bytes_per_step, tp_bytes_per_step, ...)
        NAME/config.toml               the config the run resolved (model sizes for the formula)
        NAME.out (gpt_torch.py runs)   its JSON result line {"impl":"torch-gpt",...}
        machine.txt                    binary, load averages, the address-space limit

      the runs: mem-tpK (K = 1, 2, 4); oom-tp1, oom-tp4 (under the limit); comm-tpK (K = 2, 4);
      speed-SIDE-rR for SIDE in chorus_t1, torch_t1, chorus_t2, torch_t2, chorus_tp2, chorus_pp2
      and R = 1..repeats; bpb-chorus_tp1, bpb-chorus_tp2, bpb-torch. A missing run leaves its
      cells as "—" and is named in the page; the exit status is then 1.

Every number in the page is computed from those files: a tokens/s cell is the median over the
repeats with the spread (min–max) beside it, and a ratio is a ratio of medians. Standard library
only (tomllib: Python 3.11).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tomllib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "common"))
from runs import (fmt, fmt_spread, is_number, jsonl_records, median_spread, page_header, read, why_failed,  # noqa: E402
                  write_page)

MIB = 1024.0 * 1024.0
SPEED_SIDES = (
    ("chorus_t1", "chorus tp=1, 1 worker x 1 thread"),
    ("torch_t1", "PyTorch eager, 1 process x 1 thread"),
    ("chorus_t2", "chorus tp=1, 1 worker x 2 threads"),
    ("torch_t2", "PyTorch eager, 1 process x 2 threads"),
    ("chorus_tp2", "chorus tp=2, 2 workers x 1 thread"),
    ("chorus_pp2", "chorus layer-wise pp=2, 2 workers x 1 thread"),
)
BPB_SIDES = (("chorus_tp1", "chorus tp=1"), ("chorus_tp2", "chorus tp=2"), ("torch", "PyTorch eager"))
BPB_TOLERANCE = 0.02
# An out-of-memory failure names memory; anything else (a signal, another error) fails the check.
OOM_PATTERN = re.compile(r"out of memory|can't allocate memory|cannot allocate memory|bad_alloc|memory limit",
                         re.IGNORECASE)


def why(raw, name):
    """Why a run failed: its exit status and the last line of its stderr that says "error" (a
    rank's own message; the launcher's closing line only points at it), else why_failed's."""
    err = [line.strip() for line in read(os.path.join(raw, f"{name}.err")).splitlines() if line.strip()]
    said = next((line for line in reversed(err) if "error" in line.lower()), None)
    if said is None:
        return why_failed(raw, name)
    rc = read(os.path.join(raw, f"{name}.rc")).strip()
    return said if rc in ("", "0") else f"exit status {rc}: {said}"


# ---------------------------------------------------------------------------------------------
# torch-args


def torch_args(config_path):
    """gpt_torch.py's arguments for the GPT and optimizer of a chorus config (run.sh adds
    --steps, --threads and --json-out)."""
    with open(config_path, "rb") as f:
        c = tomllib.load(f)
    model, optim, sched = c.get("model", {}), c.get("optim", {}), c.get("schedule", {})
    train, data = c.get("train", {}), c.get("data", {})
    if model.get("name") != "gpt":
        raise SystemExit(f"{config_path}: model.name is {model.get('name')!r}, not 'gpt'")
    if optim.get("name", "sgd") != "adamw":
        raise SystemExit(f"{config_path}: gpt_torch.py trains with AdamW; optim.name is {optim.get('name')!r}")
    if sched.get("name", "cosine") not in ("cosine", "constant"):
        raise SystemExit(f"{config_path}: gpt_torch.py knows the cosine and constant schedules, not "
                         f"{sched.get('name')!r}")
    args = ["--layers", model.get("layers", 4), "--heads", model.get("heads", 4), "--embed", model.get("embed", 128),
            "--context", model.get("context", 128), "--dropout", model.get("dropout", 0.0),
            "--batch", train.get("batch_size", 128), "--seed", train.get("seed", 0),
            "--lr", optim.get("lr", 0.05), "--beta1", optim.get("beta1", 0.9), "--beta2", optim.get("beta2", 0.999),
            "--eps", optim.get("eps", 1e-8), "--weight-decay", optim.get("weight_decay", 0.0),
            "--schedule", sched.get("name", "cosine"), "--warmup", sched.get("warmup_steps", 0),
            "--warmup-start", sched.get("warmup_start", 0.1), "--min-lr", sched.get("min_lr", 0.0),
            "--eval-windows", data.get("eval_windows", 64), "--data", data.get("path", "/usr/share/games/fortunes")]
    if not model.get("tie_embeddings", True):
        args.append("--untied")
    for a in args:
        print(a)
    return 0


# ---------------------------------------------------------------------------------------------
# reading the raw outputs


def chorus_run(raw, name, need=()):
    """(start record, summary record, eval records, None) of a finished chorus run, or
    (None, None, None, reason). `need`: summary keys that must be numbers."""
    recs, err = jsonl_records(raw, name, why=why)
    if err:
        return None, None, None, err
    if not recs or recs[-1].get("event") != "summary":
        event = recs[-1].get("event") if recs else None
        return None, None, None, (f"{name}/metrics.jsonl: the last line is not the run summary (event {event!r}; "
                                  f"did the run stop early? {why(raw, name)})")
    start = next((r for r in recs if r.get("event") == "start"), {})
    evals = [r for r in recs if r.get("event") == "eval"]
    summary = recs[-1]
    bad = [k for k in need if not is_number(summary.get(k))]
    if bad:
        return None, None, None, f"{name}/metrics.jsonl: the summary lacks {', '.join(bad)}"
    return start, summary, evals, None


def run_config(raw, name):
    """The config.toml chorus wrote into the run's output.dir, as a dict ({} if unreadable)."""
    try:
        with open(os.path.join(raw, name, "config.toml"), "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def torch_result(raw, name):
    """(result dict, None) or (None, reason): the JSON line gpt_torch.py prints."""
    for line in reversed(read(os.path.join(raw, f"{name}.out")).splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if obj.get("impl") == "torch-gpt":
            bad = [k for k in ("tokens_per_s", "val_bpb", "val_loss", "steps") if not is_number(obj.get(k))]
            if bad:
                return None, f"{name}.out: the result line lacks {', '.join(bad)}"
            return obj, None
    return None, f"{name}.out has no result line ({why(raw, name)})"


def tokens_per_s(summary, cfg):
    """The summary's tokens_per_s, else samples_per_s x model.context."""
    if is_number(summary.get("tokens_per_s")):
        return summary["tokens_per_s"]
    ctx = cfg.get("model", {}).get("context")
    if is_number(summary.get("samples_per_s")) and is_number(ctx):
        return summary["samples_per_s"] * ctx
    return None


def mib(v, spec=",.1f"):
    return fmt(v / MIB if v is not None else None, spec)


def rc_of(raw, name):
    s = read(os.path.join(raw, f"{name}.rc")).strip()
    return int(s) if re.fullmatch(r"-?\d+", s) else None


# ---------------------------------------------------------------------------------------------
# the sections


def memory_section(raw, problems):
    out = ["## 1. Memory per rank at tp = 1, 2, 4\n"]
    rows = {}
    cfg = {}
    for k in (1, 2, 4):
        name = f"mem-tp{k}"
        start, summary, _, err = chorus_run(raw, name, need=("peak_rss_mb_max",))
        if err:
            problems.append(err)
            continue
        bad = [key for key in ("param_bytes_sharded", "param_bytes_replicated", "optimizer_bytes")
               if not is_number(start.get(key))]
        if bad:
            problems.append(f"{name}/metrics.jsonl: the start record lacks {', '.join(bad)}")
            continue
        if start.get("tp") not in (None, k):
            problems.append(f"{name}/metrics.jsonl: the start record says tp {start.get('tp')}, the run asked for {k}")
            continue
        rows[k] = (start, summary)
        cfg = cfg or run_config(raw, name)
    m = cfg.get("model", {})
    if m:
        out.append(f"The GPT of bench/model-parallel/memory.toml: {m.get('layers')} layers, {m.get('heads')} heads, "
                   f"embed {m.get('embed')}, context {m.get('context')}, vocabulary 256, tied embeddings; "
                   f"batch {cfg.get('train', {}).get('batch_size')}, AdamW, "
                   f"{cfg.get('train', {}).get('max_steps')} steps, one thread per worker. Bytes are rank 0's "
                   "(every tp rank holds the same amount), from the run's start record.\n")
    out.append("- **sharded**: parameters split over the tp ranks (qkv, attention projection and MLP weights, the "
               "column biases, the vocabulary-split embedding); **replicated**: the rest (LayerNorms, position "
               "embedding, the row-parallel biases), whole on every rank.")
    out.append("- gradients: one per parameter, of its size (= the parameter bytes); optimizer: AdamW's state as "
               "the run reports it (optimizer_bytes). The state of a part is its parameters x (2 + optimizer bytes / "
               "parameter bytes): the moments are kept per parameter, so the optimizer splits like the parameters.")
    out.append("- peak RSS: the largest per-worker peak resident set (getrusage ru_maxrss) in the summary; it also "
               "holds LibTorch, activations and communication buffers.\n")
    out.append("| tp | params sharded (MiB) | params replicated (MiB) | gradients (MiB) | optimizer (MiB) | "
               "params + grads + optimizer (MiB) | sharded state (MiB) | sharded / tp=1 | 1/tp | replicated state "
               "(MiB) | peak RSS (MiB) |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = None
    verdicts = []
    for k in (1, 2, 4):
        if k not in rows:
            out.append(f"| {k} | — | — | — | — | — | — | — | {1 / k:.3f} | — | — |")
            continue
        start, summary = rows[k]
        sh, rep, opt = start["param_bytes_sharded"], start["param_bytes_replicated"], start["optimizer_bytes"]
        params = sh + rep
        factor = 2 + (opt / params if params else 0)
        sh_state, rep_state = sh * factor, rep * factor
        if k == 1:
            base = sh_state
        ratio = sh_state / base if base else None
        if ratio is not None:
            ok = abs(ratio - 1 / k) <= 0.01 / k
            verdicts.append((k, ratio, ok))
        out.append(f"| {k} | {mib(sh)} | {mib(rep)} | {mib(params)} | {mib(opt)} | {mib(2 * params + opt)} | "
                   f"{mib(sh_state)} | {fmt(ratio, '.4f')} | {1 / k:.4f} | {mib(rep_state)} | "
                   f"{fmt(summary.get('peak_rss_mb_max'), ',.0f')} |")
    out.append("")
    if len(verdicts) == 3:
        held = all(ok for _, _, ok in verdicts)
        out.append(f"**The sharded state falls as 1/tp: {'holds' if held else 'does not hold'}** (within 1% of "
                   f"1/tp at " + ", ".join(f"tp={k}: {r:.4f}" for k, r, _ in verdicts if k != 1) + "). "
                   "The replicated remainder stays the same at every tp.\n")
    else:
        out.append("**The sharded state falls as 1/tp:** — (a run is missing)\n")
    return out


def oom_section(raw, machine, problems):
    out = ["## 2. A model that fits only when split\n"]
    limit = machine.get("address-space limit", "").strip()
    cfg = run_config(raw, "oom-tp4") or run_config(raw, "oom-tp1")
    m = cfg.get("model", {})
    if m:
        out.append(f"The GPT of bench/model-parallel/oom.toml ({m.get('layers')} layers, {m.get('heads')} heads, "
                   f"embed {m.get('embed')}, context {m.get('context')}; batch "
                   f"{cfg.get('train', {}).get('batch_size')}, AdamW, {cfg.get('train', {}).get('max_steps')} "
                   "steps), trained at tp = 1 and tp = 4 under the same per-process address-space limit: "
                   f"`prlimit --as` = **{limit or '?'}** on `chorus train`, which every worker it forks inherits "
                   "(each process has its own limit of that size).\n")
    out.append("| run | exit status | steps trained | peak RSS (MiB) | params sharded + replicated per rank (MiB) | "
               "what it said |")
    out.append("|---|---:|---:|---:|---:|---|")
    verdict = {}
    for k in (1, 4):
        name = f"oom-tp{k}"
        rc = rc_of(raw, name)
        err_lines = [line.strip() for line in read(os.path.join(raw, f"{name}.err")).splitlines() if line.strip()]
        recs, _ = jsonl_records(raw, name, why=why)
        recs = recs or []
        start = next((r for r in recs if r.get("event") == "start"), {})
        summary = recs[-1] if recs and recs[-1].get("event") == "summary" else {}
        steps = summary.get("steps") if summary else (max(
            [r.get("step", 0) for r in recs if r.get("event") == "step"] or [0]) if recs else None)
        params = (start.get("param_bytes_sharded", 0) + start.get("param_bytes_replicated", 0)) if start else None
        said = next((line for line in err_lines if OOM_PATTERN.search(line)), None)
        signalled = rc is not None and rc >= 128 or any("killed by signal" in line for line in err_lines)
        if k == 1:
            ok = rc is not None and rc != 0 and not signalled and said is not None
            what = said or (err_lines[-1] if err_lines else "no error output")
            verdict[k] = (ok, "fails with an out-of-memory error" if ok else
                          ("exited 0: it fit under the limit (raise the model or lower the limit)" if rc == 0 else
                           "did not fail with an out-of-memory error (a signal or another error)"))
        else:
            ok = rc == 0 and bool(summary) and is_number(steps) and steps > 0
            what = f"trained {steps} step(s)" if ok else (said or (err_lines[-1] if err_lines else "no error output"))
            verdict[k] = (ok, "trains" if ok else "did not train under the limit")
        if rc is None:
            problems.append(f"{name}: no exit status ({name}.rc missing: did the run happen?)")
        what = what.replace("|", "\\|")
        if len(what) > 420:
            what = what[:420] + " ..."
        out.append(f"| tp={k} | {fmt(rc, 'd')} | {fmt(steps if is_number(steps) else None, 'd')} | "
                   f"{fmt(summary.get('peak_rss_mb_max') if summary else None, ',.0f')} | "
                   f"{mib(params) if params else '—'} | `{what}` |")
    out.append("")
    both = all(verdict.get(k, (False,))[0] for k in (1, 4))
    out.append(f"**tp=1 {verdict.get(1, (False, '—'))[1]}; tp=4 {verdict.get(4, (False, '—'))[1]}: "
               f"{'holds' if both else 'does not hold'}.**\n")
    if not both:
        problems.append("the out-of-memory check does not hold: " + "; ".join(
            f"tp={k} {v[1]}" for k, v in sorted(verdict.items())))
    return out


def comm_formula(k, b, t, e, layers):
    """Bytes rank r sends per training step at tp = k, dp = 1, without sequence parallelism:
    (4 L + 2) all-reduces of B T E float32 and the cross-entropy's two of B T and 2 B T float32,
    each sending 2 (k - 1) / k of its buffer (any of chorus's algorithms at a power-of-two k
    with counts divisible by k)."""
    elements = (4 * layers + 2) * b * t * e + 3 * b * t
    return 2.0 * (k - 1) / k * 4 * elements


def comm_section(raw, problems):
    out = ["## 3. Tensor-parallel communication per step against the formula\n"]
    out.append("What each tp rank sends per training step at dp = 1 (no sequence parallelism), from the code "
               "(src/chorus/train/gpt.cc, src/chorus/parallel/tensor/layers.cc, attention.cc, cross_entropy.cc):\n")
    out.append("- per block, forward: the attention projection's and the MLP's row-parallel outputs are "
               "all-reduced (2 x B T E); backward: the qkv and fc1 column-parallel inputs' gradients are "
               "all-reduced (2 x B T E);")
    out.append("- the vocabulary-parallel embedding all-reduces its output (forward, B T E); the tied logits' "
               "input passes copyToTensorParallelRegion, whose backward all-reduces the hidden state's gradient "
               "(B T E);")
    out.append("- the vocabulary-parallel cross-entropy all-reduces the row maxima (B T) and the stacked "
               "sum-exp and target logits (2 B T); its backward is local.")
    out.append("- An all-reduce of n bytes sends 2 (k-1)/k n bytes from every rank with each of the algorithms "
               "chorus's auto table picks here (halving-doubling below 128 KiB on shm, direct above; ring or "
               "halving-doubling on tcp): at power-of-two k with a count divisible by k all three move exactly "
               "that (src/chorus/comm/collectives/allreduce.cc and each algorithm's cost line).\n")
    out.append("**bytes per step per rank = 2 (k-1)/k x 4 x [(4 L + 2) B T E + 3 B T]** (float32, B the "
               "per-replica batch, T the context, E the width, L the layers).\n")
    out.append("Measured: the summary's tp_bytes_per_step (what rank 0 sent on its tp group per step), or, when "
               "the run does not report it, bytes_per_step (everything rank 0 sent during the training loop / "
               "steps, which adds the loop's own small collectives). Evaluation is off in these runs.\n")
    out.append("| tp | B | T | E | L | steps | measured (bytes/step) | which | formula (bytes/step) | "
               "measured / formula | within 1% |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|")
    oks = []
    for k in (2, 4):
        name = f"comm-tp{k}"
        _, summary, _, err = chorus_run(raw, name)
        cfg = run_config(raw, name)
        m, tr = cfg.get("model", {}), cfg.get("train", {})
        dims = (tr.get("batch_size"), m.get("context"), m.get("embed"), m.get("layers"))
        if err:
            problems.append(err)
            out.append(f"| {k} | " + " | ".join(fmt(d, 'd') for d in dims) + " | — | — | — | — | — | — |")
            continue
        if is_number(summary.get("tp_bytes_per_step")):
            measured, which = summary["tp_bytes_per_step"], "tp_bytes_per_step"
        elif is_number(summary.get("bytes_per_step")):
            measured, which = summary["bytes_per_step"], "bytes_per_step"
        else:
            problems.append(f"{name}/metrics.jsonl: the summary has neither tp_bytes_per_step nor bytes_per_step")
            continue
        if not all(is_number(d) for d in dims):
            problems.append(f"{name}/config.toml: cannot read the batch, context, embed and layers")
            continue
        b, t, e, layers = dims
        dp = summary.get("dp", 1)
        b_local = b // dp if is_number(dp) and dp else b
        formula = comm_formula(k, b_local, t, e, layers)
        r = measured / formula
        ok = abs(r - 1) <= 0.01
        oks.append(ok)
        out.append(f"| {k} | {b_local} | {t} | {e} | {layers} | {fmt(summary.get('steps'), 'd')} | {measured:,.0f} | "
                   f"{which} | {formula:,.0f} | {r:.4f} | {'yes' if ok else 'no'} |")
    out.append("")
    if len(oks) == 2:
        out.append(f"**Measured within 1% of the formula: {'holds' if all(oks) else 'does not hold'}.**\n")
    else:
        out.append("**Measured within 1% of the formula:** — (a run is missing)\n")
    return out


def speed_section(raw, repeats, problems):
    out = ["## 4. Tokens per second: chorus against PyTorch eager\n"]
    cfg = {}
    values = {}
    for side, _ in SPEED_SIDES:
        values[side] = []
        for r in range(1, repeats + 1):
            name = f"speed-{side}-r{r}"
            if side.startswith("torch"):
                res, err = torch_result(raw, name)
                v = res["tokens_per_s"] if res else None
            else:
                _, summary, _, err = chorus_run(raw, name)
                v = None
                if not err:
                    c = run_config(raw, name)
                    cfg = cfg or c
                    v = tokens_per_s(summary, c)
                    if v is None:
                        err = f"{name}/metrics.jsonl: the summary has neither tokens_per_s nor samples_per_s"
            if err:
                problems.append(err)
            else:
                values[side].append(v)
    m, tr = cfg.get("model", {}), cfg.get("train", {})
    if m:
        out.append(f"The GPT of bench/model-parallel/small.toml ({m.get('layers')} layers, {m.get('heads')} heads, "
                   f"embed {m.get('embed')}, context {m.get('context')}, tied embeddings), batch "
                   f"{tr.get('batch_size')} windows, AdamW, {tr.get('max_steps')} steps per run, on both sides "
                   "(gpt_torch.py gets the same numbers from the config: `report.py torch-args`). tokens/s = steps x "
                   "batch x context / the wall time of the training steps (window drawing included, evaluation and "
                   "start-up excluded; chorus: the slowest worker's). chorus runs `chorus train` with train.threads; "
                   "PyTorch runs bench/model-parallel/gpt_torch.py with --threads (torch.set_num_threads, one "
                   "inter-op thread).\n")
    out.append(f"Each row ran {repeats} time(s), the sides alternating within every repetition (chorus, PyTorch "
               "at 1 thread, then at 2 threads, then tp=2 and pp=2). A cell is the **median** with the spread "
               "(min–max); a ratio is the ratio of medians.\n")
    med = {side: median_spread(values[side])[0] for side, _ in SPEED_SIDES}

    def ratio(a, b):
        return med[a] / med[b] if med[a] and med[b] else None

    out.append("| setting | tokens/s | against PyTorch at the same cores |")
    out.append("|---|---:|---:|")
    against = {"chorus_t1": "torch_t1", "chorus_t2": "torch_t2", "chorus_tp2": "torch_t2", "chorus_pp2": "torch_t2"}
    for side, label in SPEED_SIDES:
        ref = against.get(side)
        r = ratio(side, ref) if ref else None
        out.append(f"| {label} | {fmt_spread(values[side], ',.0f')} | "
                   f"{fmt(r, '.2f') + 'x' if r else ('' if not ref else '—')} |")
    out.append("")
    r1, r2 = ratio("chorus_t1", "torch_t1"), ratio("chorus_t2", "torch_t2")
    if r1 and r2:
        held = r1 >= 1 and r2 >= 1
        out.append(f"**chorus tp=1 at least as fast as PyTorch (1 thread {r1:.2f}x, 2 threads {r2:.2f}x): "
                   f"{'holds' if held else 'does not hold'}.**\n")
    else:
        out.append("**chorus tp=1 against PyTorch:** — (a run is missing)\n")
    for side, what in (("chorus_tp2", "tp=2"), ("chorus_pp2", "layer-wise pp=2")):
        a, b = ratio(side, "chorus_t2"), ratio(side, "chorus_t1")
        out.append(f"- {what} on 2 workers x 1 thread: {fmt(a, '.2f')}x chorus tp=1 at 2 threads, "
                   f"{fmt(b, '.2f')}x at 1 thread.")
    out.append("- What each split pays: tp=2 all-reduces the activations 4 times per block plus the embedding, "
               "logits and loss (section 3), and each worker multiplies matrices half as wide; layer-wise pp=2 "
               "without micro-batches keeps one stage idle while the other computes (the naive split the pipeline "
               "issue improves on) and sends the activations and their gradients between the stages.\n")
    return out


def bpb_section(raw, problems):
    out = ["## 5. Validation bits per byte after the same number of steps\n"]
    rows = {}
    cfg = {}
    labels = {}
    for side, label in BPB_SIDES:
        name = f"bpb-{side}"
        if side == "torch":
            res, err = torch_result(raw, name)
            if not err:
                rows[side] = (res["steps"], res["val_loss"], res["val_bpb"])
                labels[side] = f"{label} (1 process x {res.get('threads', '?')} thread(s))"
        else:
            start, summary, evals, err = chorus_run(raw, name)
            if not err:
                c = run_config(raw, name)
                cfg = cfg or c
                labels[side] = (f"{label} ({start.get('world', '?')} worker(s) x "
                                f"{c.get('train', {}).get('threads', '?')} thread(s))")
                last = next((e for e in reversed(evals) if is_number(e.get("val_bpb"))), None)
                if last is None:
                    err = f"{name}/metrics.jsonl: no eval record with val_bpb"
                else:
                    rows[side] = (last.get("step", summary.get("global_step")), last.get("val_loss"), last["val_bpb"])
        if err:
            problems.append(err)
    m, tr, d = cfg.get("model", {}), cfg.get("train", {}), cfg.get("data", {})
    if m:
        out.append(f"The small GPT (bench/model-parallel/small.toml: {m.get('layers')} layers, embed {m.get('embed')}, "
                   f"context {m.get('context')}, batch {tr.get('batch_size')}, AdamW lr "
                   f"{cfg.get('optim', {}).get('lr')} with warmup and cosine decay) trained for "
                   f"{tr.get('max_steps')} steps on each side, then scored on the same {d.get('eval_windows')} "
                   "validation windows (evenly spread over the validation files). The training windows are the "
                   "same too: step s draws its batch from a generator seeded by windowSeed(seed, s) "
                   "(src/chorus/train/text.h; gpt_torch.py implements the same rule). The initial weights are drawn "
                   "from the same distributions but not the same numbers (chorus seeds each parameter by its name; "
                   "tp=1 and tp=2 start from identical weights).\n")
    out.append("| run | steps | val loss (nats/byte) | val bits per byte | minus chorus tp=1 |")
    out.append("|---|---:|---:|---:|---:|")
    base = rows.get("chorus_tp1", (None, None, None))[2]
    for side, label in BPB_SIDES:
        steps, loss, bpb = rows.get(side, (None, None, None))
        diff = bpb - base if bpb is not None and base is not None else None
        out.append(f"| {labels.get(side, label)} | {fmt(steps, 'd')} | {fmt(loss, '.4f')} | {fmt(bpb, '.4f')} | {fmt(diff, '+.4f')} |")
    out.append("")
    if len(rows) == len(BPB_SIDES):
        bpbs = [v[2] for v in rows.values()]
        spread = max(bpbs) - min(bpbs)
        out.append(f"**All three within {BPB_TOLERANCE} bits per byte of each other (largest difference "
                   f"{spread:.4f}): {'holds' if spread <= BPB_TOLERANCE else 'does not hold'}.**\n")
    else:
        out.append("**Within 0.02 of each other:** — (a run is missing)\n")
    return out


def report(args):
    problems = []
    title = "Model parallelism: memory, communication, speed and quality of tensor-parallel chorus"
    out, machine = page_header(title + (" (quick smoke run)" if args.quick else ""), args.command, args.raw)
    try:
        torch_version = subprocess.run(["/usr/bin/python3", "-c", "import torch; print(torch.__version__)"],
                                       capture_output=True, text=True, timeout=120).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        torch_version = "unknown"
    out.append(f"- PyTorch (/usr/bin/python3, bench/model-parallel/gpt_torch.py): torch {torch_version}, eager, CPU")
    out.append("- chorus workers on this host talk over its shared-memory transport (`ddp.transport` auto); "
               f"planned run time: {machine.get('planned', '?').strip()}, actual: {machine.get('took', '?').strip()}")
    out.append("")
    if args.quick:
        out.append("**Quick smoke run**: few steps and one repetition, so the numbers only show that the pipeline "
                   "works; the full run writes bench/results/model-parallel.md.\n")

    out.append("## Commands\n")
    out.append("```")
    out.append(args.command)
    seen = set()
    # In the order they ran (the first repetition of each), as run.sh wrote them.
    cmds = [f for f in os.listdir(args.raw) if f.endswith(".cmd")] if os.path.isdir(args.raw) else []
    for f in sorted(cmds, key=lambda f: (os.path.getmtime(os.path.join(args.raw, f)), f)):
        name = f[:-4]
        key = re.sub(r"-r\d+$", "", name)
        if key in seen:
            continue
        seen.add(key)
        out.append(read(os.path.join(args.raw, f)).strip())
    out.append("```\n")

    sections = {"memory": lambda: memory_section(args.raw, problems),
                "oom": lambda: oom_section(args.raw, machine, problems),
                "comm": lambda: comm_section(args.raw, problems),
                "speed": lambda: speed_section(args.raw, args.repeats, problems),
                "bpb": lambda: bpb_section(args.raw, problems)}
    for name, section in sections.items():
        if name in args.sections:
            out += section()
    skipped = [name for name in sections if name not in args.sections]
    if skipped:
        out.append(f"Sections not run this time: {', '.join(skipped)}.\n")

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
    r.add_argument("--src", default=None)
    r.add_argument("--command", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--quick", action="store_true")
    r.add_argument("--sections", nargs="+", default=["memory", "oom", "comm", "speed", "bpb"],
                   choices=["memory", "oom", "comm", "speed", "bpb"])
    a = p.parse_args()
    if a.cmd == "torch-args":
        return torch_args(a.config)
    return report(a)


if __name__ == "__main__":
    sys.exit(main())
