"""Assembles bench/results/collectives.md from the raw outputs bench/peers/run.sh collects:
one file per (implementation, rank count, repeat) holding rows in the table format of
`chorus bench collectives` (bytes count dtype algo time_us algbw_GBps busbw_GBps wrong) or its
--json objects. Standard library only; runs with any python3 >= 3.8.

Everything in the report — the tables, the ratios, and whether each target is met — is
computed from those files; nothing is typed in by hand.

usage: report.py --raw DIR --ranks 2 4 --repeat R --command CMD --out FILE
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "common"))
from runs import revision  # noqa: E402

# (file prefix, column title)
IMPLS = [("chorus-shm", "chorus shm"), ("chorus-tcp", "chorus tcp"), ("openmpi", "OpenMPI"), ("gloo", "Gloo")]
LATENCY_BYTES = 4096
LARGE_BYTES = 1 << 20


def parse_rows(text):
    """Rows of one output, keyed by bytes."""
    rows = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                o = json.loads(line)
                row = {"bytes": int(o["bytes"]), "time_us": float(o["time_us"]), "busbw": float(o["busbw_GBps"]),
                       "algo": str(o.get("algo", "")), "wrong": o.get("wrong")}
            except (ValueError, KeyError, TypeError):
                continue
        else:
            f = line.split()
            if len(f) != 8 or not f[0].isdigit():
                continue
            try:
                row = {"bytes": int(f[0]), "time_us": float(f[4]), "busbw": float(f[6]), "algo": f[3],
                       "wrong": None if f[7] == "-" else int(f[7])}
            except ValueError:
                continue
        rows[row["bytes"]] = row
    return rows


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def load(raw, name, ranks, repeat):
    """Per size, the median over the repeats: busbw and time_us are the medians of the runs'
    values, lo/hi the lowest and highest busbw, algo the choice of the run at the median, and
    wrong the most wrong elements any run saw; and the runs that failed."""
    runs = {}
    failures = []
    for r in range(1, repeat + 1):
        stem = os.path.join(raw, f"{name}-{ranks}-r{r}")
        out = read(stem + ".out") or ""
        rc = (read(stem + ".rc") or "").strip()
        if rc != "0":
            err = (read(stem + ".err") or "").strip().splitlines()
            failures.append({"run": f"{name}, {ranks} ranks, repeat {r}", "rc": rc or "not run",
                             "cmd": (read(stem + ".cmd") or "").strip(), "err": err[-6:]})
        for b, row in parse_rows(out).items():
            runs.setdefault(b, []).append(row)
    med = {}
    for b, rows in runs.items():
        by_bw = sorted(rows, key=lambda x: x["busbw"])
        mid = by_bw[(len(by_bw) - 1) // 2]
        wrongs = [x["wrong"] for x in rows if x["wrong"] is not None]
        med[b] = {"bytes": b, "busbw": statistics.median(x["busbw"] for x in rows),
                  "time_us": statistics.median(x["time_us"] for x in rows), "algo": mid["algo"],
                  "lo": by_bw[0]["busbw"], "hi": by_bw[-1]["busbw"], "runs": len(rows),
                  "wrong": max(wrongs) if wrongs else None}
    return med, failures


def human(b):
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if b >= 1 << shift and b % (1 << shift) == 0:
            return f"{b >> shift} {unit}"
    return f"{b} B"


def fmt_bw(row):
    if row is None:
        return "n/a"
    text = f"{row['busbw']:.3f}"
    if row.get("runs", 1) > 1:
        text += f" ({row['lo']:.2f}–{row['hi']:.2f})"
    if row["algo"] not in ("", "-", "mpi", "gloo"):
        text += f" [{row['algo']}]"
    if row["wrong"]:
        text += f" **{row['wrong']} wrong**"
    return text


def ratio(a, b, key="busbw"):
    if a is None or b is None or b[key] <= 0:
        return None
    return a[key] / b[key]


def fmt_ratio(x):
    return "n/a" if x is None else f"{x:.2f}"


def sh(cmd):
    try:
        out = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine(raw, src):
    model = "unknown"
    mem = "unknown"
    for line in (read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    for line in (read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal"):
            mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
            break
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    load = (read(os.path.join(raw, "loadavg.txt")) or "").strip().splitlines()
    torch = sh("/usr/bin/python3 -c 'import torch; print(torch.__version__)'")
    return [
        f"- CPU: {model}; nproc {nproc} (os.cpu_count {os.cpu_count()}); memory {mem}",
        f"- kernel: {platform.system()} {platform.release()} ({platform.machine()})",
        f"- compiler: {sh('c++ --version')}; MPI: {sh('mpirun --version')}; "
        f"torch (/usr/bin/python3): {torch}",
        f"- chorus commit: {revision(src)}",
        "- load average (1/5/15 min) " + "; ".join(load) if load else "- load average: not recorded",
    ]


def busy_note(raw):
    """A warning when other work competed for the cores during the run."""
    loads = []
    for line in (read(os.path.join(raw, "loadavg.txt")) or "").splitlines():
        try:
            loads.append(float(line.split(":", 1)[1].split()[0]))
        except (IndexError, ValueError):
            pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    if loads and max(loads) > cores:
        return (f"**The machine was busy**: the 1-minute load average reached {max(loads):.1f} on {cores} cores "
                "while this ran, so other work competed with every implementation and the numbers are noisy.")
    return ""


def target_line(title, n, sizes, left, right, factor, key, higher_is_better=True):
    """'met' when left >= factor*right (or left <= factor*right for times) at every size."""
    pairs = [(b, left.get(b), right.get(b)) for b in sizes]
    pairs = [(b, l, r) for b, l, r in pairs if l is not None and r is not None and r[key] > 0]
    if not pairs:
        return f"- {title}, {n} ranks: not evaluated (no data for both sides)"
    rs = [(b, l[key] / r[key]) for b, l, r in pairs]
    if higher_is_better:
        ok = [(b, x) for b, x in rs if x >= factor]
        worst = min(rs, key=lambda t: t[1])
    else:
        ok = [(b, x) for b, x in rs if x <= factor]
        worst = max(rs, key=lambda t: t[1])
    status = "**met**" if len(ok) == len(rs) else "**not met**"
    detail = f"{len(ok)} of {len(rs)} sizes; worst ratio {worst[1]:.2f} at {human(worst[0])}"
    if len(rs) == 1:
        b = pairs[0][0]
        l, r = pairs[0][1][key], pairs[0][2][key]
        unit = "µs" if key == "time_us" else "GB/s"
        detail = f"{l:.2f} vs {r:.2f} {unit}, ratio {worst[1]:.2f} at {human(b)}"
    return f"- {title}, {n} ranks: {status} ({detail})"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--raw", required=True)
    p.add_argument("--ranks", type=int, nargs="+", required=True)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--command", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--src", default=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    a = p.parse_args()

    data = {}
    failures = []
    for n in a.ranks:
        for name, _ in IMPLS:
            data[(name, n)], f = load(a.raw, name, n, a.repeat)
            failures += f

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = ["# All-reduce: chorus against OpenMPI and Gloo", "",
          f"Written by `{a.command}` on {now} at commit {revision(a.src)}. Every number below is computed from the raw outputs that run "
          "collected; rerun the command to refresh this page instead of editing it.", "",
          "## Machine", ""]
    md += machine(a.raw, a.src)
    busy = busy_note(a.raw)
    if busy:
        md += ["", busy]
    md += ["", "## Method", "",
           "All four run the same measurement (tools/chorus/bench_collectives.cc; bench/peers/mpi_allreduce.c and "
           "gloo_allreduce.py copy it): float32 sum, in place, sizes 4 KiB to 64 MiB doubling; per size one warm-up "
           "call, one probe call that sets the iterations (~0.25 s worth, 5 to 10000) and warm-up (~0.05 s worth, up "
           "to 20), a barrier, the timed loop; time_us is the mean per call of the slowest rank. busbw = bytes / time "
           "x 2(n-1)/n (nccl-tests), in GB/s (1e9 B/s). Every result is then checked exactly against the expected sum "
           "(\"wrong\" elements are flagged in the tables)."
           + (f" Each run was repeated {a.repeat} times, the implementations alternating within every repetition; a "
              "cell shows the median busbw over the repeats with the spread (min–max) in parentheses, ratios and "
              "targets use the medians, and the latency table gives median times." if a.repeat > 1 else ""),
           "", "Ranks are processes on this one machine; OpenMPI uses its shared-memory transport (btl self,vader "
           "with CMA single-copy), Gloo its TCP transport over loopback. With more ranks than cores every "
           "implementation is oversubscribed and its numbers say more about scheduling than about the wire.", "",
           "## Commands", "", "```", a.command]
    for n in a.ranks:
        for name, _ in IMPLS:
            cmd = (read(os.path.join(a.raw, f"{name}-{n}-r1.cmd")) or "").strip()
            if cmd:
                md.append(cmd)
    md += ["```", ""]

    for n in a.ranks:
        shm, tcp, mpi, gloo = (data[(name, n)] for name, _ in IMPLS)
        sizes = sorted(set().union(*(d.keys() for d in (shm, tcp, mpi, gloo))))
        md += [f"## {n} ranks: bus bandwidth (GB/s)", "",
               "Median (min–max) over the repeats; chorus's automatic algorithm choice in brackets; ratios are median "
               "busbw over median busbw.", "",
               "| size | chorus shm | chorus tcp | OpenMPI | Gloo | shm / OpenMPI | shm / Gloo | tcp / Gloo |",
               "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for b in sizes:
            s, t, m, g = shm.get(b), tcp.get(b), mpi.get(b), gloo.get(b)
            md.append(f"| {human(b)} | {fmt_bw(s)} | {fmt_bw(t)} | {fmt_bw(m)} | {fmt_bw(g)} | "
                      f"{fmt_ratio(ratio(s, m))} | {fmt_ratio(ratio(s, g))} | {fmt_ratio(ratio(t, g))} |")
        md.append("")

    md += [f"## Latency at {human(LATENCY_BYTES)} (µs per call, slowest rank)", "",
           "Ratios here are time over time: lower is better for the first named.", "",
           "| ranks | chorus shm | chorus tcp | OpenMPI | Gloo | shm / OpenMPI | tcp / Gloo |",
           "|---:|---:|---:|---:|---:|---:|---:|"]
    for n in a.ranks:
        cells = [data[(name, n)].get(LATENCY_BYTES) for name, _ in IMPLS]
        times = ["n/a" if c is None else f"{c['time_us']:.2f}" for c in cells]
        md.append(f"| {n} | " + " | ".join(times) + f" | {fmt_ratio(ratio(cells[0], cells[2], 'time_us'))} | "
                  f"{fmt_ratio(ratio(cells[1], cells[3], 'time_us'))} |")
    md.append("")

    md += ["## Targets", "",
           "Computed from the tables above; a target holds only if it holds at every size it covers.", ""]
    for n in a.ranks:
        shm, tcp, mpi, gloo = (data[(name, n)] for name, _ in IMPLS)
        sizes = sorted(set(shm) | set(mpi) | set(gloo) | set(tcp))
        large = [b for b in sizes if b >= LARGE_BYTES]
        md.append(target_line("shm busbw >= OpenMPI at >= 1 MiB", n, large, shm, mpi, 1.0, "busbw"))
        md.append(target_line("shm busbw >= 3x Gloo at >= 1 MiB", n, large, shm, gloo, 3.0, "busbw"))
        md.append(target_line("shm 4 KiB latency <= 2x OpenMPI", n, [LATENCY_BYTES], shm, mpi, 2.0, "time_us",
                              higher_is_better=False))
        md.append(target_line("tcp busbw >= Gloo at every size", n, sizes, tcp, gloo, 1.0, "busbw"))
    wrong = [(name, n, b, r["wrong"]) for (name, n), rows in data.items() for b, r in rows.items() if r["wrong"]]
    md += ["", "## Correctness", ""]
    if wrong:
        md += [f"- {name}, {n} ranks, {human(b)}: {w} wrong elements" for name, n, b, w in wrong]
    else:
        md.append("Every checked result was exact (0 wrong elements in every row).")
    write_page(md, failures, a.out)
    return 0


def write_page(md, failures, out):
    """Ends the page with the runs that failed (if any) and writes it to `out`."""
    if failures:
        md += ["", "## Runs that failed", ""]
        for f in failures:
            md.append(f"- {f['run']}: exit {f['rc']}: `{f['cmd']}`")
            md += [f"    {line}" for line in f["err"]]
    md.append("")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        fh.write("\n".join(md))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
