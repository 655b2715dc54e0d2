"""Assembles the gradient-compression benchmark's page and plot (bench/results/compression.md
and .svg) from the raw outputs bench/compression/run.sh collects in RAW:

  p1-METHOD/metrics.jsonl   phase 1 (shared memory), p2-METHOD/metrics.jsonl phase 2 (netlab),
                            p3-METHOD phase 3 (long runs), p4-randomk-VARIANT phase 4
                            (random-k's variants, against phase 1's topk and randomk);
                            chorus train's metrics: "step" events (bytes_sent, grad_bytes and
                            compression_ratio of the window since the previous one), one "eval"
                            event per epoch (test_acc, train_s and bytes_sent so far), and as the
                            LAST line the run summary (test_acc, bytes_per_step,
                            grad_bytes_per_step, compression_ratio, samples_per_s, train_s, ...),
                            or, for a run that diverged, a "diverged" event (step, epoch) instead
  NAME.cmd / .err / .rc     each run's command, stderr and exit status
  machine.txt               CPU and load average before and after

Every number in the page and the plot is computed from those files (standard library only); a
run without its result is named in the page and on stderr, and the exit status is 1.

usage:
  report.py report --raw DIR --methods M... --phase2 M... --workers W --command CMD
                   --out FILE.md --svg FILE.svg [--quick] [...]
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "common"))
from runs import fmt, is_number, jsonl_records, page_header, read, why_failed, write_page  # noqa: E402
from svg import PALETTE, svg_panel  # noqa: E402

ACC_TOLERANCE = 0.005   # 0.5 point: "within 0.5 point of dense"
DGC_MIN_RATIO = 300.0   # DGC target: at least 300x less traffic than dense
MIN_SPEEDUP = 3.0       # best method at least 3x faster than dense to dense's accuracy
SPARSE_RATIO = 0.01     # run.sh's compression.ratio for topk, topk_sampled and randomk
SUMMARY_KEYS = ("test_acc", "bytes_per_step", "grad_bytes_per_step", "compression_ratio", "samples_per_s", "train_s", "steps")
EVAL_KEYS = ("epoch", "step", "test_acc", "train_s", "bytes_sent")
SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Run:
    """One training run's metrics: summary, evals (per epoch) and the last epoch's traffic."""

    def __init__(self, start, summary, evals, steps):
        self.transport = start.get("transport")
        self.summary = summary
        self.evals = evals
        self.acc = summary["test_acc"]
        self.bytes_per_step = summary["bytes_per_step"]
        self.grad_bytes_per_step = summary["grad_bytes_per_step"]
        self.ratio = summary["compression_ratio"]
        self.samples_per_s = summary["samples_per_s"]
        self.train_s = summary["train_s"]
        # The last epoch alone (DGC's sparsity is final only after its warm-up epochs).
        last_epoch = evals[-1]["epoch"] if evals else None
        before = [s["step"] for s in steps if s.get("epoch") != last_epoch]
        window = [s for s in steps if s.get("epoch") == last_epoch]
        sent = sum(s["bytes_sent"] for s in window)
        grad = sum(s["grad_bytes"] for s in window)
        dense = sum(s["grad_bytes"] * s["compression_ratio"] for s in window)
        n = (window[-1]["step"] - (max(before) if before else 0)) if window else 0
        self.last_bytes_per_step = sent / n if n > 0 else None
        self.last_grad_bytes_per_step = grad / n if n > 0 else None
        self.last_ratio = dense / grad if grad > 0 else None

    def time_to(self, target):
        """train_s of the first eval with test_acc >= target, or None."""
        for e in self.evals:
            if e["test_acc"] >= target:
                return e["train_s"]
        return None


def diverged_at(raw, name):
    """The "diverged" event of a run that stopped with DivergenceError (chorus train stops every
    rank at the step where the loss or the gradient stopped being finite), or None."""
    path = os.path.join(raw, name, "metrics.jsonl")
    for line in read(path).splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict) and e.get("event") == "diverged" and is_number(e.get("step")):
            return e
    return None


def outcome(raw, name, run):
    """What a table shows instead of an accuracy for a run without a result."""
    if run is not None:
        return f"{run.acc:.4f}"
    d = diverged_at(raw, name)
    return f"diverged at step {d['step']}" if d else "failed"


def load_run(raw, name):
    """(Run, None) or (None, reason)."""
    events, err = jsonl_records(raw, name)
    if err:
        return None, err
    diverged = next((e for e in events if e.get("event") == "diverged"), None)
    if diverged:
        return None, (f"{name}: diverged at step {diverged.get('step')} (epoch {diverged.get('epoch', 0) + 1}): the "
                      "loss or the gradient stopped being finite, and chorus train stopped the run")
    if not events or events[-1].get("event") != "summary":
        return None, (f"{name}: the last line of metrics.jsonl is not the run summary (did the run stop early? "
                      f"{why_failed(raw, name)})")
    summary = events[-1]
    bad = [k for k in SUMMARY_KEYS if not is_number(summary.get(k))]
    if bad:
        return None, f"{name}: the summary lacks (or has a non-finite) {', '.join(bad)}"
    evals = [e for e in events if e.get("event") == "eval"]
    for e in evals:
        bad = [k for k in EVAL_KEYS if not is_number(e.get(k))]
        if bad:
            return None, (f"{name}: an eval event lacks {', '.join(bad)} (a chorus built before eval events "
                          "carried train_s and bytes_sent? rebuild it)")
    if not evals:
        return None, f"{name}: metrics.jsonl has no eval event (train.eval must be true)"
    steps = [e for e in events if e.get("event") == "step" and is_number(e.get("bytes_sent"))
             and is_number(e.get("grad_bytes")) and is_number(e.get("compression_ratio")) and is_number(e.get("step"))]
    start = next((e for e in events if e.get("event") == "start"), {})
    return Run(start, summary, evals, steps), None


def load_phase(raw, prefix, methods, problems, transport=None):
    """The runs PREFIX-METHOD that have a result; when transport is given, only those that used it."""
    runs = {}
    for m in methods:
        r, err = load_run(raw, f"{prefix}-{m}")
        if not err and transport and r.transport != transport:
            err = f"{prefix}-{m}: the run used the {r.transport!r} transport, not {transport!r}, so it bypassed the lab's links"
        if err:
            problems.append(err)
        else:
            runs[m] = r
    return runs


def fmt_bytes(v):
    if v is None:
        return "—"
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if v >= scale:
            return f"{v / scale:,.2f} {unit}"
    return f"{v:,.0f} B"


def methods_table(methods, runs, dense, all_bytes, raw=None, prefix=None):
    """Markdown rows: accuracy against dense, bytes per step (all of them too when all_bytes),
    compression ratio over the run and over its last epoch, samples/s; then a blank line. A run
    without a result shows "failed", or "diverged at step N" (with raw and prefix given)."""
    head = "| method | final accuracy | vs dense (points) | " + ("bytes/step | " if all_bytes else "")
    out = [head + "gradient bytes/step | ratio | last epoch gradient bytes/step | last epoch ratio | samples/s |",
           "|---|" + "---:|" * (8 if all_bytes else 7)]
    for m in methods:
        r = runs.get(m)
        if r is None:
            why = outcome(raw, f"{prefix}-{m}", None) if raw else "failed"
            out.append(f"| {m} | {why} |" + " |" * (7 if all_bytes else 6))
            continue
        diff = (r.acc - dense.acc) * 100 if dense else None
        total = f"{fmt_bytes(r.bytes_per_step)} | " if all_bytes else ""
        out.append(f"| {m} | {r.acc:.4f} | {fmt(diff, '+.2f')} | {total}{fmt_bytes(r.grad_bytes_per_step)} | "
                   f"{r.ratio:,.1f}x | {fmt_bytes(r.last_grad_bytes_per_step)} | "
                   f"{fmt(r.last_ratio, ',.1f')}{'x' if r.last_ratio else ''} | {r.samples_per_s:,.0f} |")
    return out + [""]


def epochs_table(runs):
    """Markdown rows: each run's test accuracy after each epoch; then a blank line."""
    n = max((len(r.evals) for r in runs.values()), default=0)
    if not n:
        return []
    out = ["| method | " + " | ".join(f"epoch {i + 1}" for i in range(n)) + " |", "|---|" + "---:|" * n]
    for m, r in runs.items():
        accs = [f"{e['test_acc']:.4f}" for e in r.evals] + [""] * (n - len(r.evals))
        out.append(f"| {m} | " + " | ".join(accs) + " |")
    return out + [""]


RANDOMK_VARIANTS = {  # phase 4's variants of randomk: (settings, what they are)
    "ef": ("residual_decay 1", "plain error feedback, random-k's rule before the fix"),
    "unbiased": ("error_feedback false", "the drawn entries times n/k, no residual"),
}


def load_phase4(raw, variants, problems):
    """Phase 4's runs p4-randomk-VARIANT that have a result. One that diverged is a result of
    the phase (the table says at which step), not a problem."""
    runs = {}
    for v in variants:
        name = f"p4-randomk-{v}"
        r, err = load_run(raw, name)
        if r is not None:
            runs[v] = r
        elif not diverged_at(raw, name):
            problems.append(err)
    return runs


def randomk_section(args, p1, p4):
    """Random-k against top-k at the same ratio: phase 1's topk and randomk (its default,
    residual_decay 0.9) and phase 4's variants of randomk, with the compression ratio over the
    whole run next to the last epoch's."""
    topk = p1.get("topk")
    rows = [("topk", "—", "p1-topk", topk, "topk" in args.methods),
            ("randomk", "residual_decay 0.9 (default)", "p1-randomk", p1.get("randomk"), "randomk" in args.methods)]
    rows += [("randomk", RANDOMK_VARIANTS.get(v, (v, ""))[0], f"p4-randomk-{v}", p4.get(v), True) for v in args.phase4]
    out = [f"## Phase 4: random-k against top-k at ratio {SPARSE_RATIO:g}\n",
           "Both send the same number of entries per step; top-k picks the largest of gradient + residual, "
           "random-k picks them at random. Random-k's residual decays by compression.residual_decay (0.9) a "
           "step, so an entry waiting for its draw carries at most 10 steps of gradient; the variants: "
           + "; ".join(f"**{settings}**: {what}" for settings, what in RANDOMK_VARIANTS.values())
           + " (docs/compression.md, \"Random-k\"). topk and randomk are phase 1's runs, the variants phase "
           "4's, with phase 1's settings otherwise. Ratio: over the whole run; last epoch: over its last "
           "epoch only.\n",
           "| method | settings | final accuracy | vs topk (points) | gradient bytes/step | ratio (whole run) | "
           "last epoch ratio | samples/s |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    shown = {}
    for method, settings, name, r, ran in rows:
        if r is None:
            why = outcome(args.raw, name, None) if ran else "not run (not in phase 1's methods)"
            out.append(f"| {method} | {settings} | {why} | | | | | |")
            continue
        shown[f"{method}, {settings}" if method == "randomk" else method] = r
        diff = (r.acc - topk.acc) * 100 if topk and r is not topk else None
        out.append(f"| {method} | {settings} | {r.acc:.4f} | {fmt(diff, '+.2f')} | {fmt_bytes(r.grad_bytes_per_step)} | "
                   f"{r.ratio:,.1f}x | {fmt(r.last_ratio, ',.1f')}{'x' if r.last_ratio else ''} | "
                   f"{r.samples_per_s:,.0f} |")
    out.append("")
    if shown:
        out.append("Test accuracy after each epoch:\n")
        out += epochs_table(shown)
    return out


def verdict(ok):
    return "—" if ok is None else ("**met**" if ok else "**not met**")


def notes_on(runs, phase):
    """Odd things in the numbers: a method that never learned, or whose accuracy fell."""
    notes = []
    for m, r in runs.items():
        accs = [e["test_acc"] for e in r.evals]
        if r.acc < 0.5:
            notes.append(f"{phase}: {m} ends at {r.acc:.4f} test accuracy: it did not train (diverged or stalled).")
        drops = [(a - b) * 100 for a, b in zip(accs, accs[1:]) if a - b > 0.02]
        if drops:
            notes.append(f"{phase}: {m}'s accuracy fell by {max(drops):.1f} points between two epochs "
                         f"({', '.join(f'{a:.4f}' for a in accs)}).")
    return notes


def plot(svg, p1, p2, dense2_acc, title):
    """Writes the plot as a self-contained SVG (standard library only): phase 1 accuracy against
    cumulative bytes sent (log x), and phase 2 accuracy against training time when there is one."""
    def series(runs, x_key):
        out = []
        for i, (m, r) in enumerate(runs.items()):
            dense = m == "none"
            out.append(("none (dense)" if dense else m, "#000000" if dense else PALETTE[i % len(PALETTE)], dense,
                        [(e[x_key], e["test_acc"] * 100) for e in r.evals]))
        return out

    pw, ph = 620, 420
    panels = [svg_panel(0, 30, pw, ph, series(p1, "bytes_sent"), "phase 1: accuracy after each epoch vs traffic",
                        "bytes sent by rank 0 since the start (log scale)", "test accuracy (%)", True)]
    if p2:
        hline = (dense2_acc * 100, "dense final") if dense2_acc is not None else None
        panels.append(svg_panel(pw, 30, pw, ph, series(p2, "train_s"), "phase 2: 100 Mbit/s, accuracy vs time",
                                "training seconds (evaluation excluded)", "test accuracy (%)", False, hline))
    width = pw * len(panels)
    body = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{ph + 30}" '
            f'viewBox="0 0 {width} {ph + 30}" font-family="sans-serif">',
            f'<rect width="{width}" height="{ph + 30}" fill="white"/>',
            f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="16" font-weight="bold">{title}</text>']
    for el in panels:
        body.extend(el)
    body.append("</svg>")
    tmp = svg + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(body) + "\n")
    os.replace(tmp, svg)


def report(args):
    problems = []
    p1 = load_phase(args.raw, "p1", args.methods, problems)
    p2 = load_phase(args.raw, "p2", args.phase2, problems, transport="tcp")
    p3 = load_phase(args.raw, "p3", args.phase3, problems)
    p4 = load_phase4(args.raw, args.phase4, problems)
    dense1 = p1.get("none")
    dense3 = p3.get("none")
    dense2 = p2.get("none")
    w = args.workers

    out, machine = page_header(f"Gradient compression (issue #4){' — quick smoke run' if args.quick else ''}", args.command, args.raw)
    if "phase 2 rerun before" in machine:
        out.append(f"- phase 2 was rerun alone (`--phase2-only`) with the same binary; phases 1 and 3 are "
                   f"those of the previous run in the same raw folder (their commands are below). Load "
                   f"average around the rerun: {machine['phase 2 rerun before'].strip()} before, "
                   f"{machine.get('phase 2 rerun after', '?').strip()} after")
    if "phase 4 rerun before" in machine:
        out.append(f"- phase 4 was rerun alone (`--randomk-only`) with the same binary; phases 1 to 3 are those of "
                   f"the previous run in the same raw folder. Load average around the rerun: "
                   f"{machine['phase 4 rerun before'].strip()} before, "
                   f"{machine.get('phase 4 rerun after', '?').strip()} after")
    out.append("")

    out.append("## Setup\n")
    if args.quick:
        out.append(f"**Quick run** (a check of the pipeline, not a result): first 2560 training and 1000 test samples, "
                   f"2 epochs, {w} workers; dgc warms up for {args.dgc_warmup} epoch so that its last epoch runs at "
                   "99.9% sparsity. The targets below are computed the same way but mean nothing at this size.\n")
    out.append(f"Fashion-MNIST, the CNN of bench/compression/cnn.toml (conv-BN-ReLU-pool 32 and 64 channels, fc 128), "
               f"{'2' if args.quick else '5'} epochs, global batch 128 split over {w} workers, SGD lr 0.05 momentum "
               "0.9 with cosine decay to 0, seed 0, evaluated on the test split after each epoch. Methods and "
               f"settings: topk, topk_sampled, randomk ratio {SPARSE_RATIO:g} (randomk's residual decaying by 0.9 "
               "a step, its default); threshold tau "
               f"{args.threshold:g}; qsgd 16 levels; dgc sparsity 0.999, warm-up {args.dgc_warmup} epochs, "
               "momentum 0.9 applied by dgc (optim.momentum 0); powersgd rank 4; error feedback on (the default) "
               "for every other method that has it.\n")
    out.append(f"- **phase 1**: `--nproc {w}` on this machine (shared-memory transport).")
    limit = (f" on the first {args.netlab_limit_train} training samples only (`--netlab-limit-train`), so its "
             "accuracies are not phase 1's" if args.netlab_limit_train > 0 else "")
    out.append(f"- **phase 2**: one rank per host on a {w}-host netlab (tools/netlab/netlab.sh, `ddp.transport=tcp`), "
               f"100 Mbit/s per host, no added latency (this kernel has no netem), train.threads 1{limit}. "
               "Every method of phase 1.")
    if args.phase3:
        out.append(f"- **phase 3**: {', '.join(args.phase3)} as in phase 1 but for {args.long_epochs} epochs.")
    if args.phase4:
        out.append(f"- **phase 4**: randomk variants {', '.join(args.phase4)} "
                   f"({'; '.join(RANDOMK_VARIANTS.get(v, (v, ''))[0] for v in args.phase4)}), as in phase 1, "
                   "against phase 1's topk and randomk at the same ratio.")
    out.append("- bytes/step: all the bytes rank 0 sent per training step (gradients, and the BatchNorm buffers "
               "DDP broadcasts from rank 0 before each forward, as PyTorch DDP does by default); "
               "gradient bytes/step: the part sent during backward, the gradient buckets' all-reduce or "
               "all-gather; ratio: chorus's compression ratio, what a dense float32 ring all-reduce of the "
               "buckets would send / gradient bytes, over the whole run; last epoch: the same over the last "
               "epoch only (dgc's sparsity reaches 99.9% only after its warm-up).")
    out.append("- samples/s: samples of all workers / training seconds (the slowest rank; evaluation excluded). "
               "The workers share this machine's cores, so compute-heavy codecs show here.")
    out.append("- time to dense accuracy: train_s of the first evaluation (after an epoch) whose accuracy reaches "
               "dense's final phase 2 accuracy; dense's own time is measured the same way. Evaluations come once "
               "per epoch, so these times are rounded up to an epoch boundary.\n")

    out.append("## Commands\n")
    out.append("```")
    out.append(args.command)
    for prefix, methods in (("p1", args.methods), ("p2", args.phase2), ("p3", args.phase3),
                            ("p4-randomk", args.phase4)):
        for m in methods:
            cmd = read(os.path.join(args.raw, f"{prefix}-{m}.cmd")).strip()
            if cmd:
                out.append(cmd.replace(SRC + "/", ""))
    out.append("```\n")

    out.append(f"## Phase 1: {w} workers, shared memory\n")
    out += methods_table(args.methods, p1, dense1, all_bytes=True, raw=args.raw, prefix="p1")
    if "threshold" in p1 and "topk" in p1:
        share = p1["topk"].ratio / p1["threshold"].ratio
        out.append(f"threshold (tau {args.threshold:g}) sends about {share:.2f}% of the entries over the run "
                   "(topk's 1% scaled by the two ratios; the issue asks for a tau near 1%; set THRESHOLD=tau "
                   "to change it).\n")
    if p1:
        out.append("Test accuracy after each epoch (cumulative bytes sent by rank 0 in the plot):\n")
        out += epochs_table(p1)

    speedups = {}
    if args.phase2:
        out.append(f"## Phase 2: {w} hosts, 100 Mbit/s\n")
        out.append(f"Methods: {', '.join(args.phase2)}.\n")
        target = dense2.acc if dense2 else None
        dense_time = dense2.time_to(target) if dense2 else None
        out.append(f"Dense's final accuracy (the target): {fmt(target, '.4f')}; dense reaches it after "
                   f"{fmt(dense_time, '.1f')} s of training.\n")
        out.append("| method | final accuracy | vs dense (points) | bytes/step | ratio | samples/s | training s | "
                   "time to dense accuracy (s) | speedup vs dense |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for m in args.phase2:
            r = p2.get(m)
            if r is None:
                out.append(f"| {m} | failed | | | | | | | |")
                continue
            diff = (r.acc - target) * 100 if target is not None else None
            t = r.time_to(target) if target is not None else None
            speedup = dense_time / t if t and dense_time else None
            if speedup is not None:
                speedups[m] = speedup
            reach = fmt(t, ".1f") if t is not None or target is None else "not reached"
            out.append(f"| {m} | {r.acc:.4f} | {fmt(diff, '+.2f')} | {fmt_bytes(r.bytes_per_step)} | {r.ratio:,.1f}x | "
                       f"{r.samples_per_s:,.0f} | {r.train_s:,.1f} | {reach} | {fmt(speedup, '.2f')}"
                       f"{'x' if speedup else ''} |")
        out.append("")

    if args.phase3:
        out.append(f"## Phase 3: {args.long_epochs} epochs, {w} workers, shared memory\n")
        out.append(f"The same runs as phase 1 with train.epochs = {args.long_epochs} (the cosine schedule stretched "
                   f"over them; dgc still warms up for {args.dgc_warmup} epochs), so that the compressed methods have "
                   "more steps at their final compression.\n")
        out += methods_table(args.phase3, p3, dense3, all_bytes=False, raw=args.raw, prefix="p3")
        out += epochs_table(p3)

    if args.phase4:
        out += randomk_section(args, p1, p4)

    out.append("## Targets of the issue\n")
    out.append("| target | measured | verdict |")
    out.append("|---|---|---|")
    dgc_target = (f"DGC at 99.9% sparsity: within 0.5 point of dense, >= {DGC_MIN_RATIO:.0f}x less gradient "
                  "traffic")
    ps_target = "PowerSGD rank 4 within 0.5 point of dense"
    for label, runs, dense, epochs in (("phase 1", p1, dense1, 2 if args.quick else 5),
                                       ("phase 3", p3, dense3, args.long_epochs)):
        if label == "phase 3" and not args.phase3:
            continue
        dgc = runs.get("dgc")
        if dgc and dense:
            diff = (dgc.acc - dense.acc) * 100
            final_sparse = len(dgc.evals) > args.dgc_warmup
            traffic = (dense.grad_bytes_per_step / dgc.last_grad_bytes_per_step
                       if dgc.last_grad_bytes_per_step else None)
            everything = dense.bytes_per_step / dgc.last_bytes_per_step if dgc.last_bytes_per_step else None
            ok = (None if traffic is None or not final_sparse
                  else (diff >= -ACC_TOLERANCE * 100 and traffic >= DGC_MIN_RATIO))
            measured = (f"{diff:+.2f} points; last epoch {fmt(traffic, ',.0f')}x fewer gradient bytes per step "
                        f"than dense ({fmt(everything, ',.0f')}x counting the buffer broadcasts too; whole run "
                        f"{dgc.ratio:,.1f}x, warm-up included)")
            if not final_sparse:
                measured += "; the run ended inside dgc's warm-up, so 99.9% was never reached"
            out.append(f"| {dgc_target} ({label}, {epochs} epochs) | {measured} | {verdict(ok)} |")
        else:
            out.append(f"| {dgc_target} ({label}) | no dgc or dense result | — |")
        ps = runs.get("powersgd")
        if ps and dense:
            diff = (ps.acc - dense.acc) * 100
            out.append(f"| {ps_target} ({label}, {epochs} epochs) | {diff:+.2f} points ({ps.ratio:,.1f}x less "
                       f"gradient traffic) | {verdict(diff >= -ACC_TOLERANCE * 100)} |")
        else:
            out.append(f"| {ps_target} ({label}) | no powersgd or dense result | — |")
    compressed = {m: s for m, s in speedups.items() if m != "none"}
    if compressed:
        best = max(compressed, key=compressed.get)
        out.append(f"| best method >= {MIN_SPEEDUP:.0f}x faster than dense to dense's accuracy at 100 Mbit/s | "
                   f"{best}: {compressed[best]:.2f}x | {verdict(compressed[best] >= MIN_SPEEDUP)} |")
    else:
        why = "phase 2 was not run" if not args.phase2 else "no compressed method reached dense's accuracy"
        ok = None if not args.phase2 or dense2 is None else False
        out.append(f"| best method >= {MIN_SPEEDUP:.0f}x faster than dense to dense's accuracy at 100 Mbit/s | "
                   f"{why} | {verdict(ok)} |")
    out.append("")

    notes = (notes_on(p1, "phase 1") + notes_on(p2, "phase 2") + notes_on(p3, "phase 3")
             + notes_on({f"randomk ({v})": r for v, r in p4.items()}, "phase 4"))
    if notes:
        out.append("## Notes\n")
        out.extend(f"- {n}" for n in notes)
        out.append("")
    if problems:
        out.append("## Runs without a result\n")
        out.extend(f"- {p}" for p in problems)
        out.append(f"\nRaw outputs: {args.raw}\n")

    if p1:
        out.append(f"## Plot\n\n![accuracy vs bytes sent]({os.path.basename(args.svg)})\n")

    title = "Gradient compression, Fashion-MNIST CNN" + (" (quick smoke run)" if args.quick else "")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if p1:
        plot(args.svg, p1, p2, dense2.acc if dense2 else None, title)
    return write_page(args.out, out, problems)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("report")
    r.add_argument("--raw", required=True)
    r.add_argument("--methods", nargs="+", required=True)
    r.add_argument("--phase2", nargs="*", default=[])
    r.add_argument("--phase3", nargs="*", default=[])
    r.add_argument("--phase4", nargs="*", default=[], help="random-k variants run in phase 4 (p4-randomk-VARIANT)")
    r.add_argument("--long-epochs", type=int, default=0)
    r.add_argument("--workers", type=int, required=True)
    r.add_argument("--netlab-limit-train", type=int, default=0)
    r.add_argument("--threshold", type=float, default=0.0)
    r.add_argument("--dgc-warmup", type=int, default=4)
    r.add_argument("--command", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--svg", required=True)
    r.add_argument("--quick", action="store_true")
    return report(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
