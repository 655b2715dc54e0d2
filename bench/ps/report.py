"""Assembles the parameter-server benchmark's page and plot (bench/results/ps.md and .svg) from
the raw outputs bench/ps/run.sh collects in RAW, one folder per run (CONFIG, CONFIG-slow with
the straggler, CONFIG-seedK and CONFIG-slow-seedK for the bsp, asp and ssp repeats with seed K
(ACC_SEEDS), scale-wW for the server-load runs):

  metrics.jsonl           rank 0 (DDP) or worker 0 (parameter server): "start" (world, servers),
                          "step" events, one "eval" per epoch (test_acc, train_s; with servers
                          also elapsed_s) and, as the LAST line, the run "summary"
  ps/worker<w>.jsonl      with servers: each worker's "step" events (step, elapsed_s since its
                          start, and the window's step_s, compute_s, push_s, pull_s) and its
                          "summary" (steps, train_s, compute_s, straggler_sleep_s, push_s, ...)
  ps/server<s>.json       with servers: each server's report (version, pushes, busy_s, wall_s,
                          and per worker w<w>_pushes, _applied, _dropped, _max_staleness,
                          _mean_staleness, _max_clock_gap, _failed)
  config.toml             the resolved config (batch size, ps.*, straggler settings)
  NAME.cmd/.err/.rc/.wall each run's command, stderr, exit status and wall seconds
  machine.txt             CPU, load average before and after, the benchmark's wall seconds

Every number in the page and the plot is computed from those files (standard library only); a
run without its result, or whose files lack a field, is named in the page and on stderr, and
the exit status is 1.

usage: report.py --raw DIR --configs C... [--acc-seeds K...] --scale-workers W... --command CMD --out FILE.md
                 --svg FILE.svg [--quick] [...]
"""

import argparse
import json
import os
import sys
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SRC, "bench", "common"))
from runs import fmt, is_number, jsonl_records, page_header, read, why_failed, write_page  # noqa: E402
import svg as charts  # noqa: E402

ASYNC_SPEEDUP = 2.0     # with the straggler, asp or ssp at least 2x bsp's throughput
BACKUP_LOSS = 0.10      # bsp with backup workers and the straggler: < 10% below bsp without one
ACC_TOLERANCE = 0.01    # asp and ssp final accuracy within 1 point of bsp's
TARGET_MARGIN = 0.01    # target accuracy: DDP's final accuracy (no straggler) minus 1 point

STEP_KEYS = ("step", "elapsed_s", "step_s", "compute_s", "push_s", "pull_s")
WORKER_SUMMARY_KEYS = ("steps", "train_s", "elapsed_s", "compute_s", "straggler_sleep_s", "push_s", "pull_s")
SERVER_KEYS = ("version", "pushes", "pulls", "busy_s", "wall_s", "load")
SERVER_WORKER_KEYS = ("pushes", "applied", "dropped", "max_staleness", "mean_staleness", "max_clock_gap", "failed")
EVAL_KEYS = ("epoch", "test_acc", "train_s")


class BadRun(Exception):
    """A run whose outputs are missing or lack a field; the message names the run and the file."""


def need(obj, keys, where, check=is_number):
    bad = [k for k in keys if not check(obj.get(k))]
    if bad:
        raise BadRun(f"{where} lacks (or has a non-finite) {', '.join(bad)}")


def load_jsonl(raw, name, rel):
    events, err = jsonl_records(raw, name, rel)
    if err:
        raise BadRun(err)
    if not events or events[-1].get("event") != "summary":
        raise BadRun(f"{name}: the last line of {rel} is not a summary (did the run stop early? "
                     f"{why_failed(raw, name)})")
    return events


def at(points, t):
    """The value at time t of a worker's logged (elapsed_s, value) points, linear between them
    and from (0, 0); clamped to the first and last."""
    prev = (0.0, 0.0)
    for e, v in points:
        if e >= t:
            if e <= prev[0]:
                return v
            return prev[1] + (v - prev[1]) * (max(t, prev[0]) - prev[0]) / (e - prev[0])
        prev = (e, v)
    return prev[1]


class Worker:
    def __init__(self, steps, summary):
        self.points = [(e["elapsed_s"], e["step"]) for e in steps]
        # Training seconds (inside steps) at each event: each event averages its window's steps.
        self.trained, total, last = [], 0.0, 0
        for e in steps:
            total += e["step_s"] * (e["step"] - last)
            last = e["step"]
            self.trained.append((e["elapsed_s"], total))
        self.finish = self.points[-1][0]
        # When the worker's clock (elapsed_s) started, on the machine's clock; None when chorus
        # does not say.
        self.start_unix = summary.get("start_unix_s") if is_number(summary.get("start_unix_s")) else None
        self.offset = 0.0
        n = summary["steps"]
        self.steps = n
        self.step_ms = 1000 * summary["train_s"] / n
        self.compute_ms = 1000 * summary["compute_s"] / n
        self.sleep_ms = 1000 * summary["straggler_sleep_s"] / n
        self.push_ms = 1000 * summary["push_s"] / n
        self.pull_ms = 1000 * summary["pull_s"] / n


class Run:
    """One training run: worker 0's accuracy, the aggregate throughput and (with servers) the
    workers' step times and the servers' statistics."""

    def __init__(self, raw, name, want_eval=True):
        self.name = name
        events = load_jsonl(raw, name, "metrics.jsonl")
        self.summary = events[-1]
        start = next((e for e in events if e.get("event") == "start"), None)
        if start is None:
            raise BadRun(f"{name}: metrics.jsonl has no start event")
        need(start, ("world",), f"{name}: the start event of metrics.jsonl")
        try:
            self.config = tomllib.loads(read(os.path.join(raw, name, "config.toml")))
            self.batch = int(self.config["train"]["batch_size"])
        except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as e:
            raise BadRun(f"{name}: config.toml is missing or lacks train.batch_size ({e})") from None
        self.workers = int(start["world"])
        self.servers = int(start.get("servers", 0) or 0)
        self.evals = [e for e in events if e.get("event") == "eval"]
        for e in self.evals:
            need(e, EVAL_KEYS + (("elapsed_s",) if self.servers else ()), f"{name}: an eval event of metrics.jsonl")
        if want_eval:
            if not self.evals:
                raise BadRun(f"{name}: metrics.jsonl has no eval event (train.eval must be true)")
            need(self.summary, ("test_acc",), f"{name}: the summary of metrics.jsonl")
        self.acc = self.summary.get("test_acc") if want_eval else None
        wall = read(os.path.join(raw, f"{name}.wall")).strip()
        self.wall = float(wall) if wall else None
        self.rc = read(os.path.join(raw, f"{name}.rc")).strip()
        self.ps = self.servers > 0
        if self.ps:
            self.load_ps(raw)
        else:
            need(self.summary, ("samples_per_s", "train_s", "steps"), f"{name}: the summary of metrics.jsonl")
            self.throughput = self.summary["samples_per_s"]
            self.applied_throughput = None
            self.window = self.summary["train_s"]
            self.step_ms = [1000 * self.summary["train_s"] / self.summary["steps"]] * self.workers
            self.w0_outside = None

    def load_ps(self, raw):
        name = self.name
        self.ws = []
        for w in range(self.workers):
            rel = f"ps/worker{w}.jsonl"
            events = load_jsonl(raw, name, rel)
            steps = [e for e in events if e.get("event") == "step"]
            if not steps:
                raise BadRun(f"{name}: {rel} has no step event")
            for e in steps:
                need(e, STEP_KEYS, f"{name}: a step event of {rel}")
            need(events[-1], WORKER_SUMMARY_KEYS, f"{name}: the summary of {rel}")
            if events[-1]["steps"] <= 0 or steps[-1]["step"] != events[-1]["steps"]:
                raise BadRun(f"{name}: {rel}'s last step event is step {steps[-1]['step']} but its summary "
                             f"counts {events[-1]['steps']} steps")
            self.ws.append(Worker(steps, events[-1]))
        self.srv = []
        for s in range(self.servers):
            rel = f"ps/server{s}.json"
            try:
                o = json.loads(read(os.path.join(raw, name, rel)) or "null")
            except ValueError as e:
                raise BadRun(f"{name}: {rel} is not JSON ({e})") from None
            if not isinstance(o, dict):
                raise BadRun(f"{name}: {rel} does not exist or is empty ({why_failed(raw, name)})")
            need(o, SERVER_KEYS, f"{name}: {rel}")
            for w in range(self.workers):
                need(o, [f"w{w}_{k}" for k in SERVER_WORKER_KEYS if k != "failed"], f"{name}: {rel}")
                need(o, [f"w{w}_failed"], f"{name}: {rel}", check=lambda v: isinstance(v, bool))
            self.srv.append(o)
        # Throughput over the window in which every worker ran: from the last worker's start to
        # the first one's finish (on the machine's clock when the workers' start times are known,
        # else each from its own start), the samples all workers did in it over its length.
        self.aligned = all(w.start_unix is not None for w in self.ws)
        if self.aligned:
            first = min(w.start_unix for w in self.ws)
            for w in self.ws:
                w.offset = w.start_unix - first
        local = self.batch // self.workers
        self.begin = max(w.offset for w in self.ws)
        self.end = min(w.offset + w.finish for w in self.ws)
        self.span = max(w.offset + w.finish for w in self.ws)  # first start to last finish
        self.window = self.end - self.begin
        if self.window <= 0:
            self.throughput = self.applied_throughput = self.w0_outside = None
        else:
            done = [(at(w.points, self.end - w.offset) - at(w.points, self.begin - w.offset)) * local
                    for w in self.ws]
            self.throughput = sum(done) / self.window
            # The same, counting only the pushes the servers applied (bsp with backup drops some).
            applied = []
            for w, d in enumerate(done):
                pushes = sum(o[f"w{w}_pushes"] for o in self.srv)
                applied.append(d * sum(o[f"w{w}_applied"] for o in self.srv) / pushes if pushes else 0)
            self.applied_throughput = sum(applied) / self.window
            # Worker 0's time outside its steps in the window: its evaluations, mostly.
            w0 = self.ws[0]
            inside = at(w0.trained, self.end - w0.offset) - at(w0.trained, self.begin - w0.offset)
            self.w0_outside = max(0.0, self.window - inside)
        self.step_ms = [w.step_ms for w in self.ws]

    def time_to(self, target):
        """(train_s, elapsed_s or None) of worker 0's first evaluation at or above target, or None."""
        for e in self.evals:
            if e["test_acc"] >= target:
                return e["train_s"], e.get("elapsed_s")
        return None

    # Server statistics, over all servers (each sees every worker's pushes).
    def total(self, key, worker=None):
        ws = range(self.workers) if worker is None else [worker]
        return sum(o[f"w{w}_{key}"] for o in self.srv for w in ws)

    def mean_staleness(self, worker=None):
        ws = range(self.workers) if worker is None else [worker]
        applied = self.total("applied", worker)
        s = sum(o[f"w{w}_mean_staleness"] * o[f"w{w}_applied"] for o in self.srv for w in ws)
        return s / applied if applied else None

    def max_of(self, key):
        return max(o[f"w{w}_{key}"] for o in self.srv for w in range(self.workers))

    def failed_workers(self):
        return sorted({w for o in self.srv for w in range(self.workers) if o[f"w{w}_failed"]})


def label(c):
    if c == "ddp":
        return "all-reduce DDP"
    if c.startswith("bsp-b"):
        return f"bsp backup b={c[5:]}"
    if c.startswith("ssp"):
        return f"ssp s={c[3:]}"
    if c == "asp-push":
        return "asp, momentum per push"
    return c


def is_async(c):
    return c == "asp" or (c.startswith("ssp") and c[3:].isdigit())


def verdict(ok):
    return "—" if ok is None else ("**met**" if ok else "**not met**")


def check_settings(run, cfg, slow, args):
    """Problems where the run's resolved config is not what its name says."""
    ps = run.config.get("ps", {})
    train = run.config.get("train", {})
    want = {"servers": 0 if cfg == "ddp" else args.servers}
    if cfg != "ddp":
        want["mode"] = "ssp" if cfg.startswith("ssp") else ("asp" if cfg.startswith("asp") else "bsp")
        want["async_momentum"] = "push" if cfg == "asp-push" else "round"
        if cfg.startswith("ssp"):
            want["staleness"] = int(cfg[3:])
        want["backup"] = int(cfg[5:]) if cfg.startswith("bsp-b") else 0
    bad = [f"ps.{k} = {ps.get(k)!r}, not {v!r}" for k, v in want.items() if ps.get(k) != v]
    stragglers = train.get("straggler_workers", [])
    if slow and (stragglers != [args.straggler] or train.get("straggler_factor") != args.factor):
        bad.append(f"train.straggler_workers = {stragglers}, straggler_factor = {train.get('straggler_factor')}")
    if not slow and stragglers:
        bad.append(f"train.straggler_workers = {stragglers} in a run without a straggler")
    if run.workers != args.workers:
        bad.append(f"{run.workers} workers, not {args.workers}")
    return f"{run.name}: its config.toml says {'; '.join(bad)}" if bad else None


def svg_bars(x0, y0, width, height, groups, legend, title, xlabel, nice_ticks):
    """A horizontal grouped bar chart: groups is [(label, [value or None, ...])], one bar per
    legend entry [(name, color)]."""
    left, right, top, bottom = 130, 45, 30 + 16 * len(legend), 45
    pw, ph = width - left - right, height - top - bottom
    vals = [v for _, vs in groups for v in vs if v is not None]
    if not vals:
        return []
    ticks = nice_ticks(0, max(vals))
    xmax = ticks[-1]
    el = [f'<text x="{x0 + left + pw / 2:.1f}" y="{y0 + 18}" text-anchor="middle" font-size="14">{title}</text>',
          f'<rect x="{x0 + left}" y="{y0 + top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>']
    for t in ticks:
        x = x0 + left + t / xmax * pw
        el.append(f'<line x1="{x:.1f}" y1="{y0 + top}" x2="{x:.1f}" y2="{y0 + top + ph}" stroke="#ddd"/>')
        el.append(f'<text x="{x:.1f}" y="{y0 + top + ph + 16}" text-anchor="middle" font-size="11">{t:g}</text>')
    el.append(f'<text x="{x0 + left + pw / 2:.1f}" y="{y0 + height - 8}" text-anchor="middle" font-size="12">'
              f'{xlabel}</text>')
    slot = ph / max(1, len(groups))
    bar = slot * 0.8 / len(legend)
    for i, (name, vs) in enumerate(groups):
        gy = y0 + top + i * slot + slot * 0.1
        el.append(f'<text x="{x0 + left - 6}" y="{gy + slot * 0.4 + 4:.1f}" text-anchor="end" font-size="11">'
                  f'{name}</text>')
        for j, v in enumerate(vs):
            if v is None:
                continue
            by = gy + j * bar
            el.append(f'<rect x="{x0 + left}" y="{by:.1f}" width="{v / xmax * pw:.1f}" height="{bar * 0.9:.1f}" '
                      f'fill="{legend[j][1]}"/>')
            el.append(f'<text x="{x0 + left + v / xmax * pw + 3:.1f}" y="{by + bar * 0.45 + 4:.1f}" '
                      f'font-size="10">{v:,.0f}</text>')
    for j, (name, color) in enumerate(legend):
        ly = y0 + 30 + j * 16
        el.append(f'<rect x="{x0 + left}" y="{ly - 8}" width="14" height="10" fill="{color}"/>')
        el.append(f'<text x="{x0 + left + 20}" y="{ly + 1}" font-size="11">{name}</text>')
    return el


def plot(svg, args, runs, scale, target, title):
    m = charts
    pw, ph = 560, 420

    def acc_series(slow):
        out = []
        for i, c in enumerate(args.configs):
            r = runs.get(c + ("-slow" if slow else ""))
            if r is None:
                continue
            color = "#000000" if c == "ddp" else m.PALETTE[i % len(m.PALETTE)]
            out.append((label(c), color, c == "ddp", [(e["train_s"], e["test_acc"] * 100) for e in r.evals]))
        return out

    hline = (target * 100, "target") if target is not None else None
    xlabel = "worker 0's training seconds (evaluation excluded)"
    row1 = [m.svg_panel(0, 30, pw, ph, acc_series(False), "no straggler: accuracy vs time", xlabel,
                        "test accuracy (%)", False, hline),
            m.svg_panel(pw, 30, pw, ph, acc_series(True), f"worker {args.straggler} slowed {args.factor:g}x", xlabel,
                        "test accuracy (%)", False, hline)]
    groups = [(label(c), [getattr(runs.get(c), "throughput", None), getattr(runs.get(c + "-slow"), "throughput", None)])
              for c in args.configs]
    row1.append(svg_bars(2 * pw, 30, pw, ph, groups, [("no straggler", "#1f77b4"),
                                                      (f"worker {args.straggler} slowed {args.factor:g}x", "#d62728")],
                         "throughput, all workers", "samples/s", m.nice_ticks))
    row2 = []
    if scale:
        ws = sorted(scale)
        row2.append(m.svg_panel(0, 30 + ph, pw, ph, [("asp, 1 server", "#1f77b4", True,
                                                      [(w, scale[w].throughput) for w in ws
                                                       if scale[w].throughput is not None])],
                                "server load: throughput", "workers", "samples/s (all workers)", False))
        row2.append(m.svg_panel(pw, 30 + ph, pw, ph, [("server busy", "#d62728", True,
                                                       [(w, 100 * busy_fraction(scale[w])) for w in ws])],
                                "server load: busy fraction", "workers", "busy_s / training span (%)", False))
    width = 3 * pw
    height = ph * (2 if row2 else 1) + 30
    body = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif">',
            f'<rect width="{width}" height="{height}" fill="white"/>',
            f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="16" font-weight="bold">{title}</text>']
    for el in row1 + row2:
        body.extend(el)
    body.append("</svg>")
    tmp = svg + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(body) + "\n")
    os.replace(tmp, svg)


def start_skew(r):
    """The largest spread of the workers' elapsed_s at a step they all logged."""
    at_step = [dict((st, e) for e, st in w.points) for w in r.ws]
    common = set(at_step[0]).intersection(*at_step[1:])
    return max((max(a[k] for a in at_step) - min(a[k] for a in at_step) for k in common), default=0.0)


def busy_fraction(r):
    """The busiest server's busy_s over the workers' training span (first start to last finish)."""
    return max(o["busy_s"] for o in r.srv) / r.span if r.srv and r.span > 0 else None


def change(loss):
    """A relative loss as words: '12.3% lower' or '4.5% higher'."""
    if loss is None:
        return "—"
    return f"{100 * abs(loss):.1f}% {'lower' if loss >= 0 else 'higher'}"


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs)


def ms_list(vs):
    return " / ".join(f"{v:.1f}" for v in vs)


def report(args):
    problems = []
    runs = {}
    names = [c + suffix for c in args.configs for suffix in ("", "-slow")]
    for n in names:
        try:
            r = Run(args.raw, n)
        except BadRun as e:
            problems.append(str(e))
            continue
        bad = check_settings(r, n.removesuffix("-slow"), n.endswith("-slow"), args)
        if bad:
            problems.append(bad)
            continue
        runs[n] = r
    # Repeats with other seeds (ACC_SEEDS): final accuracies only, for the accuracy target.
    seeds = {}  # (config, slow) -> {seed: accuracy}, seed 0 from the main runs
    for n, r in runs.items():
        if n.removesuffix("-slow") == "bsp" or is_async(n.removesuffix("-slow")):
            seeds.setdefault((n.removesuffix("-slow"), n.endswith("-slow")), {})[0] = r.acc
    for k in args.acc_seeds:
        for c in args.configs:
            if c != "bsp" and not is_async(c):
                continue
            for slow in (False, True):
                n = f"{c}{'-slow' if slow else ''}-seed{k}"
                try:
                    r = Run(args.raw, n)
                except BadRun as e:
                    problems.append(str(e))
                    continue
                bad = check_settings(r, c, slow, args)
                seed = r.config.get("train", {}).get("seed")
                if not bad and seed != k:
                    bad = f"{n}: its config.toml says train.seed = {seed!r}, not {k}"
                if bad:
                    problems.append(bad)
                    continue
                seeds.setdefault((c, slow), {})[k] = r.acc
    all_seeds = [0] + list(args.acc_seeds)

    def mean_acc(c, slow):
        """Mean final accuracy over every seed, or None unless every seed has a result."""
        got = seeds.get((c, slow), {})
        return sum(got.values()) / len(got) if len(got) == len(all_seeds) else None

    scale = {}
    for w in args.scale_workers:
        n = f"scale-w{w}"
        try:
            r = Run(args.raw, n, want_eval=False)
        except BadRun as e:
            problems.append(str(e))
            continue
        if not r.ps or r.workers != w or r.servers != 1:
            problems.append(f"{n}: ran {r.workers} workers and {r.servers} servers, not {w} and 1")
            continue
        scale[w] = r

    ddp, bsp = runs.get("ddp"), runs.get("bsp")
    if ddp is not None:
        target = ddp.acc - TARGET_MARGIN
        target_from = f"all-reduce DDP's final accuracy without a straggler ({ddp.acc:.4f}) minus 1 point"
    elif bsp is not None:
        target = bsp.acc - TARGET_MARGIN
        target_from = (f"bsp's final accuracy without a straggler ({bsp.acc:.4f}) minus 1 point (the DDP run has no "
                       "result)")
    else:
        target, target_from = None, "none: neither DDP nor bsp has a result"

    out, machine = page_header(f"Parameter server (issue #5){' — quick smoke run' if args.quick else ''}", args.command, args.raw)
    if "wall" in machine:
        out.append(f"- the benchmark's runs took {int(machine['wall']) / 60:.1f} minutes in all")
    out.append("")

    w, s = args.workers, args.servers
    data = (f"the first {args.limit_train} training samples" if args.limit_train else "the whole training split")
    test = f"the first {args.limit_test} test samples" if args.limit_test else "the 10,000 test samples"
    out.append("## Setup\n")
    if args.quick:
        out.append("**Quick run** (a check of the pipeline, not a result): the numbers and verdicts below are "
                   "computed the same way but mean nothing at this size.\n")
    first = next(iter(runs.values()), None)
    if first is not None:
        c = first.config
        model, optim, sched = c.get("model", {}), c.get("optim", {}), c.get("schedule", {})
        hyper = (f"global batch {first.batch} ({first.batch // w} samples per worker per step, drop_last), "
                 f"{optim.get('name')} lr {optim.get('lr')} momentum {optim.get('momentum')} (on the servers when "
                 f"there are servers{'; bench/ps/cnn.toml says why not 0.9' if optim.get('momentum') != 0.9 else ''}), "
                 f"{sched.get('name')} schedule with "
                 f"{sched.get('warmup_steps')} warm-up steps, seed {c.get('train', {}).get('seed')}")
        net = (f"{model.get('name')}: conv-BN-ReLU-pool blocks of {model.get('channels')} channels, fc "
               f"{model.get('fc')}")
    else:
        hyper, net = "as in bench/ps/cnn.toml (no run has a result)", "the CNN"
    out.append(f"Fashion-MNIST, bench/ps/cnn.toml ({net}), trained on {data} for {args.epochs} epoch(s) and "
               f"evaluated by worker 0 on {test} after each epoch; {w} workers, {hyper}. All processes share "
               "this machine's cores (shared-memory transport, one torch thread each).\n")
    out.append(f"- **all-reduce DDP**: `--nproc {w}`, no server.")
    out.append(f"- **parameter server**: `--nproc {w} --set ps.servers={s}`: {w} workers and {s} server processes, "
               "each server holding half of the model and applying SGD with momentum to it. bsp: synchronous rounds "
               "(the average of all pushes, one step); asp: every push applied at once as a step on grad / "
               f"{w}, the servers' momentum advancing once per {w} pushes (ps.async_momentum = round; "
               "asp, momentum per push: torch's momentum on every push); ssp s: asp while no worker is more than s clocks ahead of the slowest; bsp backup b: a round "
               "closes after workers - b pushes, and later pushes to it are dropped.")
    out.append(f"- **straggler** (runs marked slowed): `--set train.straggler_workers=[{args.straggler}] --set "
               f"train.straggler_factor={args.factor:g}`: worker {args.straggler} sleeps {args.factor - 1:g}x its "
               f"compute time every step, so its steps take {args.factor:g}x as long as its compute. A "
               "parameter-server worker sleeps after its backward pass, while the others wait for it (bsp) or "
               f"compute (asp); a DDP rank sleeps before its forward pass, {args.factor - 1:g}x its previous step's "
               "compute, while the other ranks compute their own step: with more processes than cores they get "
               "the CPU it leaves, so DDP's straggler costs less than bsp's.")
    ps_runs = [r for r in list(runs.values()) + list(scale.values()) if r.ps]
    if ps_runs and all(r.aligned for r in ps_runs):
        clocks = ("the workers' clocks are put on the machine's clock by the start time each worker reports "
                  "(start_unix_s in its summary)")
    else:
        unaligned = [r.name for r in ps_runs if not r.aligned]
        # In bsp every worker's pull of round k is answered when the round closes, so the spread of
        # the workers' elapsed_s at the same step is their start skew.
        skews = [start_skew(r) for n, r in runs.items() if n in ("bsp", "bsp-slow")]
        skew = (f"; in the bsp runs, where all workers finish a step at the same moment, their elapsed_s at the "
                f"same step differ by up to {max(skews):.2f} s" if skews else "")
        clocks = ("the workers' summaries carry no start time (start_unix_s), so each worker's elapsed_s is taken "
                  "from its own start, as if all had started together (they start once worker 0 has initialized "
                  f"the servers and they have loaded their data{skew}; runs: {', '.join(unaligned)})")
    out.append("- **samples/s** (parameter server): the samples all workers did in the window in which every "
               "worker ran — from the last worker's start to the first worker's finish — over the window's "
               "length. Each worker's step events give its step count against its elapsed seconds, interpolated "
               f"linearly between events; {clocks}. The window includes worker 0's evaluations (w0 outside s: "
               "its time in the window outside its steps); all-reduce DDP's samples/s is chorus's own, global "
               "samples over the training seconds of the slowest rank, evaluation excluded. **applied samples/s** "
               "counts only the samples whose pushes the servers applied (each worker's share applied/pushes from "
               "the servers' reports); it differs from samples/s where pushes are dropped (bsp with backup "
               "workers).")
    out.append(f"- **target accuracy**: {target_from}: {fmt(target, '.4f')}. **time to target**: worker 0's "
               "training seconds (train_s, evaluation excluded) and, for the parameter server, its elapsed seconds "
               "at its first evaluation at or above the target; evaluations come once per epoch, so these times "
               "are rounded up to an epoch boundary.")
    out.append("- **step ms**: each worker's training seconds / steps (compute, straggler sleep, push and pull); "
               "DDP's ranks run in lock-step, so one value.")
    out.append(f"- **server load**: bench/ps/mlp.toml (the 784-512-256-10 MLP: little compute per byte of "
               f"parameters) on the first 8192 training samples, asp, 1 server, 32 samples per worker per step, "
               f"{args.scale_steps} steps per worker, no evaluation. busy % (here and in the servers table): the "
               "server's busy_s over the workers' training span (first start to last finish), where busy_s adds the "
               "time its threads spent applying updates and copying pulls (it can pass 100%: two apply threads and "
               "the communication thread).\n")

    out.append("## Commands\n")
    out.append("```")
    out.append(args.command)
    seed_names = [f"{c}{sfx}-seed{k}" for k in args.acc_seeds for c in args.configs
                  if c == "bsp" or is_async(c) for sfx in ("", "-slow")]
    for n in names + seed_names + [f"scale-w{w}" for w in args.scale_workers]:
        cmd = read(os.path.join(args.raw, f"{n}.cmd")).strip()
        if cmd:
            out.append(cmd.replace(SRC + "/", ""))
    out.append("```\n")

    out.append(f"## {w} workers, {s} servers\n")
    out.append("| run | straggler | samples/s | applied samples/s | window s | w0 outside s | final accuracy | "
               "vs bsp (points) | time to target: train s | elapsed s | run wall s |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in names:
        c, slow = n.removesuffix("-slow"), n.endswith("-slow")
        strag = f"w{args.straggler} {args.factor:g}x" if slow else "none"
        r = runs.get(n)
        if r is None:
            out.append(f"| {label(c)} | {strag} | failed | | | | | | | | |")
            continue
        ref = runs.get("bsp-slow" if slow else "bsp")
        diff = (r.acc - ref.acc) * 100 if ref else None
        t = r.time_to(target) if target is not None else None
        t_train = fmt(t[0], ".1f") if t else ("not reached" if target is not None else "—")
        t_el = fmt(t[1], ".1f") if t else "—"
        window = f"{r.window:.1f}{'' if r.window > 0 else ' (none)'}"
        out.append(f"| {label(c)} | {strag} | {fmt(r.throughput, ',.0f')} | {fmt(r.applied_throughput, ',.0f')} | "
                   f"{window} | {fmt(r.w0_outside, '.1f')} | {r.acc:.4f} | {fmt(diff, '+.2f')} | {t_train} | "
                   f"{t_el} | {fmt(r.wall, '.0f')} |")
    out.append("")

    epochs = max((len(r.evals) for r in runs.values()), default=0)
    if epochs > 1:
        out.append("Worker 0's test accuracy after each epoch:\n")
        out.append("| run | " + " | ".join(f"epoch {i + 1}" for i in range(epochs)) + " |")
        out.append("|---|" + "---:|" * epochs)
        for n, r in runs.items():
            accs = [f"{e['test_acc']:.4f}" for e in r.evals] + [""] * (epochs - len(r.evals))
            out.append(f"| {label(n.removesuffix('-slow'))}{' (slowed)' if n.endswith('-slow') else ''} | "
                       + " | ".join(accs) + " |")
        out.append("")

    if args.acc_seeds:
        out.append(f"Final accuracy by seed (train.seed; seed 0 is the run above), and the mean the accuracy "
                   f"target uses:\n")
        out.append("| run | straggler | " + " | ".join(f"seed {k}" for k in all_seeds) + " | mean | "
                   "mean vs bsp (points) |")
        out.append("|---|---|" + "---:|" * (len(all_seeds) + 2))
        for slow in (False, True):
            ref = mean_acc("bsp", slow)
            for c in args.configs:
                if (c, slow) not in seeds:
                    continue
                got = seeds[(c, slow)]
                m = mean_acc(c, slow)
                diff = (m - ref) * 100 if m is not None and ref is not None else None
                strag = f"w{args.straggler} {args.factor:g}x" if slow else "none"
                out.append(f"| {label(c)} | {strag} | " + " | ".join(fmt(got.get(k), ".4f") for k in all_seeds)
                           + f" | {fmt(m, '.4f')} | {fmt(diff, '+.2f')} |")
        out.append("")

    out.append("### Workers\n")
    ids = " / ".join(f"w{i}" for i in range(w))
    out.append(f"Per worker ({ids}), averages per step over the whole run.\n")
    out.append(f"| run | straggler | steps | step ms | compute ms | w{args.straggler} sleep ms | push ms | pull ms |")
    out.append("|---|---|---|---|---|---:|---|---|")
    for n in names:
        r = runs.get(n)
        if r is None:
            continue
        strag = f"w{args.straggler} {args.factor:g}x" if n.endswith("-slow") else "none"
        lab = label(n.removesuffix("-slow"))
        if not r.ps:
            out.append(f"| {lab} | {strag} | {r.summary['steps']} | {r.step_ms[0]:.1f} (all) | | | | |")
            continue
        sleep = r.ws[args.straggler].sleep_ms if args.straggler < len(r.ws) else None
        out.append(f"| {lab} | {strag} | {' / '.join(str(x.steps) for x in r.ws)} | {ms_list(r.step_ms)} | "
                   f"{ms_list(x.compute_ms for x in r.ws)} | {fmt(sleep, '.1f')} | "
                   f"{ms_list(x.push_ms for x in r.ws)} | {ms_list(x.pull_ms for x in r.ws)} |")
    out.append("")

    out.append("### Servers\n")
    out.append("Both servers' reports together (each sees every push). Staleness: the server's version minus the "
               "version the pushed gradient was computed from, in updates (asp/ssp; 0 in bsp). Clock gap: how far "
               "a worker was ahead of the slowest when its pull was answered (ssp keeps it <= s).\n")
    out.append(f"| run | straggler | updates (per server) | pushes | dropped | w{args.straggler} dropped | "
               f"mean staleness | w{args.straggler} mean staleness | max staleness | max clock gap | "
               "busy % (per server) |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for n in names:
        r = runs.get(n)
        if r is None or not r.ps:
            continue
        strag = f"w{args.straggler} {args.factor:g}x" if n.endswith("-slow") else "none"
        pushes, dropped = r.total("pushes"), r.total("dropped")
        sp, sd = r.total("pushes", args.straggler), r.total("dropped", args.straggler)
        busy = " / ".join(f"{100 * o['busy_s'] / r.span:.0f}" for o in r.srv)
        out.append(f"| {label(n.removesuffix('-slow'))} | {strag} | {' / '.join(str(o['version']) for o in r.srv)} | "
                   f"{pushes:,} | {dropped:,} ({100 * dropped / pushes if pushes else 0:.1f}%) | "
                   f"{sd:,} ({100 * sd / sp if sp else 0:.1f}%) | {fmt(r.mean_staleness(), '.2f')} | "
                   f"{fmt(r.mean_staleness(args.straggler), '.2f')} | {r.max_of('max_staleness')} | "
                   f"{r.max_of('max_clock_gap')} | {busy} |")
    out.append("")

    out.append("## Targets of the issue\n")
    out.append("| target | measured | verdict |")
    out.append("|---|---|---|")
    bsp_slow = runs.get("bsp-slow")
    fast = {c: runs[c + "-slow"].throughput / bsp_slow.throughput for c in args.configs
            if is_async(c) and c + "-slow" in runs and runs[c + "-slow"].throughput
            and bsp_slow and bsp_slow.throughput}
    t1 = f"with worker {args.straggler} slowed {args.factor:g}x, asp or ssp >= {ASYNC_SPEEDUP:g}x bsp's throughput"
    if fast:
        best = max(fast, key=fast.get)
        measured = (", ".join(f"{label(c)} {v:.2f}x" for c, v in fast.items())
                    + f" (bsp: {bsp_slow.throughput:,.0f} samples/s)")
        out.append(f"| {t1} | {measured} | {verdict(fast[best] >= ASYNC_SPEEDUP)} |")
    else:
        out.append(f"| {t1} | no slowed bsp, asp or ssp result | — |")
    backup = next((c for c in args.configs if c.startswith("bsp-b")), None)
    t2 = (f"bsp with backup workers and worker {args.straggler} slowed {args.factor:g}x loses < "
          f"{100 * BACKUP_LOSS:.0f}% throughput against bsp without a straggler")
    b = runs.get(f"{backup}-slow") if backup else None
    if b and b.throughput and bsp and bsp.throughput:
        loss = 1 - b.throughput / bsp.throughput
        loss_applied = 1 - b.applied_throughput / bsp.applied_throughput if bsp.applied_throughput else None
        out.append(f"| {t2} | {label(backup)}: {b.throughput:,.0f} samples/s against {bsp.throughput:,.0f}: "
                   f"{change(loss)} ({change(loss_applied)} counting applied samples only: "
                   f"{fmt(b.applied_throughput, ',.0f')} against {fmt(bsp.applied_throughput, ',.0f')}) | "
                   f"{verdict(loss < BACKUP_LOSS)} |")
    else:
        out.append(f"| {t2} | no {'backup' if not backup else label(backup) + ' (slowed)'} or bsp result | — |")
    over = f"mean over seeds {', '.join(str(k) for k in all_seeds)}" if args.acc_seeds else "one seed"
    for slow in (False, True):
        cond = f"worker {args.straggler} slowed {args.factor:g}x" if slow else "no straggler"
        ref = mean_acc("bsp", slow)
        diffs = {c: (mean_acc(c, slow) - ref) * 100 for c in args.configs
                 if is_async(c) and mean_acc(c, slow) is not None} if ref is not None else {}
        t3 = f"asp and ssp final accuracy within {100 * ACC_TOLERANCE:.0f} point of bsp's ({cond}, {over})"
        if diffs:
            ok = all(d >= -100 * ACC_TOLERANCE for d in diffs.values())
            missing = [label(c) for c in args.configs if is_async(c) and c not in diffs]
            measured = ", ".join(f"{label(c)} {d:+.2f} points" for c, d in diffs.items())
            if missing:
                measured += f" ({', '.join(missing)}: no result for every seed)"
                ok = False if not ok else None
            out.append(f"| {t3} | {measured} (bsp {ref:.4f}) | {verdict(ok)} |")
        else:
            out.append(f"| {t3} | no bsp, asp or ssp result for every seed | — |")
    out.append("")

    if args.scale_workers:
        out.append("## Server load: asp, 1 server\n")
        out.append(f"bench/ps/mlp.toml, {args.scale_steps} steps per worker of 32 samples; samples/s over the window "
                   "in which every worker still ran, as above.\n")
        out.append("| workers | samples/s | per worker | step ms (mean) | push ms | pull ms | updates/s | "
                   "server busy % | mean staleness | max staleness |")
        out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for wn in args.scale_workers:
            r = scale.get(wn)
            if r is None:
                out.append(f"| {wn} | failed | | | | | | | | |")
                continue
            o = r.srv[0]
            out.append(f"| {wn} | {fmt(r.throughput, ',.0f')} | {fmt(r.throughput and r.throughput / wn, ',.0f')} | "
                       f"{mean(r.step_ms):.1f} | {mean([x.push_ms for x in r.ws]):.1f} | "
                       f"{mean([x.pull_ms for x in r.ws]):.1f} | "
                       f"{o['version'] / r.span:,.0f} | "
                       f"{100 * busy_fraction(r):.0f} | {fmt(r.mean_staleness(), '.2f')} | "
                       f"{r.max_of('max_staleness')} |")
        out.append("")

    notes = []
    for n, r in runs.items():
        if r.acc < 0.5:
            notes.append(f"{n}: worker 0 ends at {r.acc:.4f} test accuracy: it did not train (diverged or stalled).")
        if r.ps and r.failed_workers():
            notes.append(f"{n}: the servers report worker(s) {r.failed_workers()} as failed.")
        c = n.removesuffix("-slow")
        if r.ps and c.startswith("ssp") and c[3:].isdigit() and r.max_of("max_clock_gap") > int(c[3:]):
            notes.append(f"{n}: a pull was answered at clock gap {r.max_of('max_clock_gap')}, above s = {c[3:]}.")
    for n, r in list(runs.items()) + [(f"scale-w{wn}", r) for wn, r in scale.items()]:
        if r.ps and r.window <= 0:
            notes.append(f"{n}: a worker finished before another started, so no window had every worker running "
                         "and the run has no samples/s.")
    for wn, r in scale.items():
        if r.failed_workers():
            notes.append(f"scale-w{wn}: the server reports worker(s) {r.failed_workers()} as failed.")
    if notes:
        out.append("## Notes\n")
        out.extend(f"- {n}" for n in notes)
        out.append("")
    if problems:
        out.append("## Runs without a result\n")
        out.extend(f"- {p}" for p in problems)
        out.append(f"\nRaw outputs: {args.raw}\n")

    if runs or scale:
        out.append(f"## Plot\n\n![accuracy vs time, throughput, server load]({os.path.basename(args.svg)})\n")
        title = "Parameter server, Fashion-MNIST CNN" + (" (quick smoke run)" if args.quick else "")
        plot(args.svg, args, runs, scale, target, title)

    return write_page(args.out, out, problems)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--raw", required=True)
    p.add_argument("--configs", nargs="+", required=True)
    p.add_argument("--acc-seeds", nargs="*", type=int, default=[])
    p.add_argument("--scale-workers", nargs="*", type=int, default=[])
    p.add_argument("--scale-steps", type=int, default=0)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--servers", type=int, default=2)
    p.add_argument("--straggler", type=int, default=1)
    p.add_argument("--factor", type=float, default=3.0)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--limit-train", type=int, default=0)
    p.add_argument("--limit-test", type=int, default=0)
    p.add_argument("--command", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--svg", required=True)
    p.add_argument("--quick", action="store_true")
    return report(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
