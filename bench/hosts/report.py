"""Assembles bench/results/hosts.md from the raw outputs bench/hosts/run.sh collects: one run per
(implementation, link rate, size, repeat), each holding one row in the table format of
`chorus bench collectives` (bytes count dtype algo time_us algbw_GBps busbw_GBps wrong), which
bench/peers/mpi_allreduce.c prints too. Standard library only.

Everything in the report (tables, ratios, whether each target is met) is computed from those
files; nothing is typed in by hand.

usage: report.py --raw DIR --rates 1gbit 100mbit --sizes 4K 1M 16M 64M --repeat R --command CMD --out FILE
       [--train-repeat N --train-methods ... --train-limit L] [--ps-repeat N --ps-methods ... --ps-limit L
        --ps-epochs E]
"""

import argparse
import datetime
import importlib.util
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "common"))
from runs import revision, spread_with  # noqa: E402

# The table parsing, formatting and target rules of the single-host page (bench/peers/report.py).
_spec = importlib.util.spec_from_file_location("peers_report", os.path.join(os.path.dirname(HERE), "peers", "report.py"))
peers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peers)
# Reading a training run's metrics (bench/compression/report.py).
_spec = importlib.util.spec_from_file_location("compression_report",
                                               os.path.join(os.path.dirname(HERE), "compression", "report.py"))
compression = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compression)

PS_TITLES = {"dense": "dense float32", "fp16": "fp16 codec", "topk": "top-k 1%", "dgc": "DGC"}
TRAIN_TITLES = {"dense": "dense", "powersgd-all": "PowerSGD, all ranks", "powersgd-inter": "PowerSGD, between hosts",
                "dgc-all": "DGC, all ranks", "dgc-inter": "DGC, between hosts"}

IMPLS = [("hier", "chorus hierarchical (mixed)"), ("ring", "chorus flat ring (tcp)"), ("openmpi", "OpenMPI")]
LATENCY_BYTES = 4096
LARGE_BYTES = 1 << 20
TARGET_BYTES = 64 << 20


def load(raw, impl, rate, sizes, repeat):
    """Per size in bytes: the median row over the repeats (busbw, time_us medians; lo/hi the
    busbw spread; wrong the most any run saw), and the runs that failed."""
    runs, failures = {}, []
    for size in sizes:
        for r in range(1, repeat + 1):
            stem = os.path.join(raw, f"{impl}-{rate}-{size}-r{r}")
            rc = (peers.read(stem + ".rc") or "").strip()
            if rc != "0":
                err = (peers.read(stem + ".err") or "").strip().splitlines()
                failures.append({"run": f"{impl}, {rate}, {size}, repeat {r}", "rc": rc or "not run",
                                 "cmd": (peers.read(stem + ".cmd") or "").strip(), "err": err[-6:]})
            for b, row in peers.parse_rows(peers.read(stem + ".out") or "").items():
                runs.setdefault(b, []).append(row)
    med = {}
    for b, rows in runs.items():
        by_bw = sorted(rows, key=lambda x: x["busbw"])
        wrongs = [x["wrong"] for x in rows if x["wrong"] is not None]
        med[b] = {"bytes": b, "busbw": statistics.median(x["busbw"] for x in rows),
                  "time_us": statistics.median(x["time_us"] for x in rows), "algo": by_bw[(len(by_bw) - 1) // 2]["algo"],
                  "lo": by_bw[0]["busbw"], "hi": by_bw[-1]["busbw"], "runs": len(rows),
                  "wrong": max(wrongs) if wrongs else None}
    return med, failures


def cell(values, f):
    """The median of the values that exist, formatted by f, with their spread; "n/a" for none."""
    return spread_with(values, f, "n/a")


def training_section(a, failures):
    """Time to dense accuracy per method: in each round, the target is that round's dense final
    accuracy, and a method's time is the training time of its first evaluation (one per epoch)
    at or above it."""
    runs = {m: [] for m in a.train_methods}  # per method, per round: Run or None
    for r in range(1, a.train_repeat + 1):
        for m in a.train_methods:
            run, err = compression.load_run(a.raw, f"train-{m}-r{r}")
            if err:
                failures.append({"run": f"training {m}, round {r}", "rc": "no result", "cmd": "", "err": [err]})
            runs[m].append(run)
    md = ["## Training across hosts at 100 Mbit/s: time to dense accuracy", "",
          f"The CNN of bench/compression (cnn.toml: 5 epochs, one evaluation per epoch) on the first {a.train_limit} "
          "training samples, 2 hosts x 2 workers, train.threads 1, the transport and algorithms auto picks (mixed, "
          f"hierarchical). {a.train_repeat} rounds, the methods alternating within each. In each round the target "
          "is dense's final accuracy in that round; time to it is the training time of the first evaluation at or "
          "above it (so rounded up to an epoch). Cells: median over the rounds (min–max). bytes/step is everything "
          "rank 0 sends per step: with compression between hosts only, that includes its dense broadcast inside its "
          "host (shared memory), not only what crosses the host link.", "",
          "| method | final accuracy | training s | bytes/step (rank 0) | time to dense accuracy (s) | speedup vs dense |",
          "|---|---:|---:|---:|---:|---:|"]

    dense = runs.get("dense", [])
    for m in a.train_methods:
        acc = [x.acc if x else None for x in runs[m]]
        secs = [x.train_s if x else None for x in runs[m]]
        bps = [x.bytes_per_step if x else None for x in runs[m]]
        tta, speed, reached = [], [], 0
        for i, x in enumerate(runs[m]):
            d = dense[i] if i < len(dense) else None
            if x is None or d is None:
                continue
            t, td = x.time_to(d.acc), d.time_to(d.acc)
            if t is not None:
                reached += 1
                tta.append(t)
                if td:
                    speed.append(td / t)
        rounds = sum(1 for x in runs[m] if x is not None)
        reach = "" if reached == rounds else f" (reached in {reached} of {rounds})"
        md.append(f"| {TRAIN_TITLES.get(m, m)} | {cell(acc, lambda v: f'{v:.4f}')} | {cell(secs, lambda v: f'{v:.1f}')} | "
                  f"{cell(bps, compression.fmt_bytes)} | {cell(tta, lambda v: f'{v:.1f}') if tta else 'not reached'}{reach} | "
                  f"{cell(speed, lambda v: f'{v:.2f}x') if speed else '—'} |")
    md.append("")
    return md


def ps_run(raw, name):
    """(record, None) or (None, reason): worker 0's summary of a parameter-server run, with the
    last evaluation's test accuracy from the run's metrics.jsonl."""
    import json
    base = os.path.join(raw, name)
    try:
        with open(os.path.join(base, "ps", "worker0.jsonl")) as f:
            lines = [json.loads(x) for x in f if x.strip()]
    except (OSError, ValueError) as e:
        return None, f"{name}: no worker 0 record ({e})"
    summary = next((x for x in reversed(lines) if x.get("event") == "summary"), None)
    if not summary:
        return None, f"{name}: worker 0 wrote no summary (the run stopped early?)"
    need = ["samples_per_s", "workers", "steps", "push_s", "pull_s", "bytes_pushed", "train_s"]
    bad = [k for k in need if not compression.is_number(summary.get(k))]
    if bad or summary["steps"] <= 0:
        return None, f"{name}: worker 0's summary lacks {', '.join(bad) or 'steps'}"
    events, err = compression.jsonl_records(raw, name)
    evals = [e for e in (events or []) if e.get("event") == "eval" and compression.is_number(e.get("test_acc"))]
    if err or not evals:
        return None, f"{name}: no evaluation in metrics.jsonl ({err or 'train.eval must be true'})"
    steps = summary["steps"]
    return {"throughput": summary["samples_per_s"] * summary["workers"], "push": summary["push_s"] / steps,
            "pull": summary["pull_s"] / steps, "bytes": summary["bytes_pushed"] / steps, "acc": evals[-1]["test_acc"],
            "compression": summary.get("compression")}, None


def ps_section(a, failures):
    """Parameter-server throughput per push method, each round's against that round's dense."""
    runs = {m: [] for m in a.ps_methods}
    for r in range(1, a.ps_repeat + 1):
        for m in a.ps_methods:
            run, err = ps_run(a.raw, f"ps-{m}-r{r}")
            if err:
                failures.append({"run": f"parameter server {m}, round {r}", "rc": "no result", "cmd": "", "err": [err]})
            runs[m].append(run)
    md = ["## Parameter server across hosts at 100 Mbit/s: compressed pushes", "",
          f"The same CNN (cnn.toml, global batch 128) on the first {a.ps_limit} training samples for {a.ps_epochs} "
          "epochs, with `ps.servers = 2` (bsp): ranks 0 and 1 are the workers, on host 0; ranks 2 and 3 the servers, "
          "on host 1, so every push and every pull crosses the 100 Mbit/s host link (tcp). Pushes go dense or as "
          "the workers' codec messages (fp16; top-k at 1% with error feedback, layer-wise per slice; DGC with "
          "optim.momentum = 0); pulls stay dense float32 in every case. "
          f"{a.ps_repeat} rounds, the methods alternating within each. Throughput is samples per second of "
          "training time over both workers (worker 0's rate times 2); push and pull are worker 0's seconds per "
          "step; bytes/push is worker 0's payload per step. Cells: median (min–max).", "",
          "| pushes | samples/s | vs dense | push s/step | pull s/step | bytes/push | final accuracy |",
          "|---|---:|---:|---:|---:|---:|---:|"]

    dense = runs.get("dense", [])
    for m in a.ps_methods:
        rs = runs[m]
        ratio = [x["throughput"] / d["throughput"] for x, d in zip(rs, dense) if x and d and d["throughput"] > 0]
        md.append(f"| {PS_TITLES.get(m, m)} | {cell([x and x['throughput'] for x in rs], lambda v: f'{v:.0f}')} | "
                  f"{cell(ratio, lambda v: f'{v:.2f}x') if m != 'dense' else '1'} | "
                  f"{cell([x and x['push'] for x in rs], lambda v: f'{v:.3f}')} | "
                  f"{cell([x and x['pull'] for x in rs], lambda v: f'{v:.3f}')} | "
                  f"{cell([x and x['bytes'] for x in rs], compression.fmt_bytes)} | "
                  f"{cell([x and x['acc'] for x in rs], lambda v: f'{v:.4f}')} |")
    md.append("")
    return md


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--raw", required=True)
    p.add_argument("--rates", nargs="*", default=[])
    p.add_argument("--sizes", nargs="+", required=True)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--train-repeat", type=int, default=0)
    p.add_argument("--train-methods", nargs="*", default=[])
    p.add_argument("--train-limit", type=int, default=0)
    p.add_argument("--ps-repeat", type=int, default=0)
    p.add_argument("--ps-methods", nargs="*", default=[])
    p.add_argument("--ps-limit", type=int, default=0)
    p.add_argument("--ps-epochs", type=int, default=0)
    p.add_argument("--command", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--src", default=os.path.dirname(os.path.dirname(HERE)))
    a = p.parse_args()

    data, failures = {}, []
    for rate in a.rates:
        for impl, _ in IMPLS:
            data[(impl, rate)], f = load(a.raw, impl, rate, a.sizes, a.repeat)
            failures += f

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = ["# All-reduce across hosts: hierarchical against the flat ring and OpenMPI", "",
          f"Written by `{a.command}` on {now} at commit {revision(a.src)}. Every number below is computed from the "
          "raw outputs that run collected; rerun the command to refresh this page instead of editing it.", "",
          "## Machine", ""]
    md += peers.machine(a.raw, a.src)
    busy = peers.busy_note(a.raw)
    if busy:
        md += ["", busy]
    md += ["", "## Method", "",
           "Two netlab hosts (tools/netlab: network namespaces with their own hostnames, joined by a bridge; each "
           "host's egress shaped by tc to the rate named) run 2 ranks each, all four processes on this one 2-core "
           "machine. `mpirun -H h0:2,h1:2` starts every run from host 0, entering host 1 through `netlab.sh rsh`. "
           "The three sides:", "",
           "- **chorus hierarchical**: the mixed transport (shared memory between the two ranks of a host, TCP "
           "between hosts), `--algo hier`: reduce-scatter inside each host, all-reduce of each half across, "
           "all-gather inside;",
           "- **chorus flat ring**: the tcp transport between every pair (loopback inside a host), `--algo ring`;",
           "- **OpenMPI**: `MPI_Allreduce` (bench/peers/mpi_allreduce.c) with btl self,vader,tcp: its shared "
           "memory inside a host and TCP between, and its own algorithm choice.", "",
           "float32 sum in place; one size per run. Sizes under 16 MiB time themselves (~0.25 s of calls after a "
           "warm-up); 16 and 64 MiB run 1 warm-up and 3 timed calls. time_us is the slowest rank's mean per call; "
           "busbw = bytes / time x 2(n-1)/n with n = 4 ranks (GB = 1e9 B). Every result is checked exactly."
           + (f" Each size ran {a.repeat} times, the three sides alternating within every repetition; cells show "
              "the median busbw with the spread (min–max); ratios and targets use the medians." if a.repeat > 1 else ""),
           "", "## Commands", "", "```", a.command]
    for impl, _ in IMPLS:
        cmd = (peers.read(os.path.join(a.raw, f"{impl}-{a.rates[0]}-{a.sizes[-1]}-r1.cmd")) or "").strip() if a.rates else ""
        if cmd:
            md.append(cmd)
    for m in a.train_methods:
        cmd = (peers.read(os.path.join(a.raw, f"train-{m}-r1.cmd")) or "").strip() if a.train_repeat else ""
        if cmd:
            md.append(cmd)
    for m in a.ps_methods:
        cmd = (peers.read(os.path.join(a.raw, f"ps-{m}-r1.cmd")) or "").strip() if a.ps_repeat else ""
        if cmd:
            md.append(cmd)
    md += ["```", ""]

    for rate in a.rates:
        h, r, m = (data[(impl, rate)] for impl, _ in IMPLS)
        sizes = sorted(set(h) | set(r) | set(m))
        md += [f"## {rate}: bus bandwidth (GB/s)", "",
               "| size | hierarchical | flat ring | OpenMPI | hier / ring | hier / OpenMPI |",
               "|---:|---:|---:|---:|---:|---:|"]
        for b in sizes:
            x, y, z = h.get(b), r.get(b), m.get(b)
            md.append(f"| {peers.human(b)} | {peers.fmt_bw(x)} | {peers.fmt_bw(y)} | {peers.fmt_bw(z)} | "
                      f"{peers.fmt_ratio(peers.ratio(x, y))} | {peers.fmt_ratio(peers.ratio(x, z))} |")
        lat = [d.get(LATENCY_BYTES) for d in (h, r, m)]
        if any(lat):
            md += ["", f"Latency at {peers.human(LATENCY_BYTES)}, µs per call (median): "
                   + "; ".join(f"{title} {'n/a' if c is None else format(c['time_us'], '.1f')}"
                               for (_, title), c in zip(IMPLS, lat))]
        md.append("")

    if a.train_repeat > 0:
        md += training_section(a, failures)
    if a.ps_repeat > 0:
        md += ps_section(a, failures)

    md += ["## Targets", "", "Computed from the tables above.", ""]
    for rate in a.rates:
        h, r, m = (data[(impl, rate)] for impl, _ in IMPLS)
        md.append(peers.target_line(f"{rate}: hierarchical >= 1.3x flat ring at 64 MiB", 4, [TARGET_BYTES], h, r, 1.3,
                                    "busbw"))
        large = sorted(b for b in set(h) | set(m) if b >= LARGE_BYTES)
        md.append(peers.target_line(f"{rate}: hierarchical >= OpenMPI at every size >= 1 MiB", 4, large, h, m, 1.0,
                                    "busbw"))
    wrong = [(impl, rate, b, row["wrong"]) for (impl, rate), rows in data.items() for b, row in rows.items()
             if row["wrong"]]
    md += ["", "## Correctness", ""]
    md += ([f"- {impl}, {rate}, {peers.human(b)}: {w} wrong elements" for impl, rate, b, w in wrong] if wrong
           else ["Every checked result was exact (0 wrong elements in every row)."])
    peers.write_page(md, failures, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
