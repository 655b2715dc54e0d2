"""What the benchmark report scripts share: reading a run's saved output, why it failed, the
CPU's name and number formatting. Standard library only."""
import datetime
import json
import math
import os
import platform
import statistics
import subprocess

SOURCE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read(path):
    """The file's text, or "" when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def is_number(v):
    """A finite int or float (not a bool): what a metric must be to enter a table."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def jsonl_records(raw, name, rel="metrics.jsonl", why=None):
    """(the JSON records of RAW/NAME/REL, None) or (None, the reason, naming the file and why
    the run failed: why(raw, name), why_failed by default). Blank lines are skipped; any other
    line that is not JSON is the reason."""
    path = os.path.join(raw, name, rel)
    if not os.path.isfile(path):
        return None, f"{name}/{rel} does not exist ({(why or why_failed)(raw, name)})"
    out = []
    for i, line in enumerate(read(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError as e:
            return None, f"{name}/{rel}:{i} is not JSON ({e})"
    return out, None


def why_failed(raw, name):
    """A one-line reason from the run's exit status and the last line of its stderr."""
    rc = read(os.path.join(raw, f"{name}.rc")).strip()
    err = [line for line in read(os.path.join(raw, f"{name}.err")).splitlines() if line.strip()]
    tail = err[-1].strip() if err else "no error output"
    if rc in ("", "0"):
        return tail
    return f"exit status {rc}: {tail}"


def cpu_model():
    for line in read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def fmt(v, spec, missing="—"):
    return missing if v is None else format(v, spec)


def revision(src=SOURCE_DIR):
    """The commit a page describes: "abc1234", or "abc1234 with uncommitted changes" when tracked
    files other than bench/results/ differ from it (such a page describes no revision anyone can check out: rerun the
    benchmark after committing)."""
    def git(*args):
        try:
            r = subprocess.run(["git", "-C", src, *args], capture_output=True, text=True, timeout=60)
            return r.stdout.strip() if r.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None
    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown (not a git checkout)"
    # Results pages written by an earlier benchmark of the same session do not change what runs.
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results")
    return commit + (" with uncommitted changes" if dirty else "")


def median_spread(values):
    """(median, min, max) of the numbers in values, or (None, None, None) when there are none."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None, None
    return statistics.median(vals), min(vals), max(vals)


def spread_with(values, f, missing="—"):
    """"median (min–max)" of values, each formatted by f; "median" alone for one value, or missing."""
    med, lo, hi = median_spread(values)
    if med is None:
        return missing
    if len([v for v in values if v is not None]) == 1:
        return f(med)
    return f"{f(med)} ({f(lo)}–{f(hi)})"


def fmt_spread(values, spec, missing="—"):
    """spread_with, formatting with a format spec."""
    return spread_with(values, lambda v: format(v, spec), missing)


def page_header(title, command, raw):
    """The opening of a results page: its title, the command that wrote it, and the machine
    (CPU, kernel, the binary, load averages from RAW/machine.txt). Returns (lines, machine), where
    machine is machine.txt's "key: value" lines as a dict, for the page's own additions."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"# {title}\n",
           f"Written by `{command}` on {now} at commit {revision()}. Every number below is computed from the "
           "raw outputs that run collected; rerun the command to refresh this page and its plot instead of "
           "editing them.\n",
           "## Machine\n"]
    machine = dict(line.split(":", 1) for line in read(os.path.join(raw, "machine.txt")).splitlines() if ":" in line)
    out.append(f"- CPU: {cpu_model()}; nproc {os.cpu_count()}")
    out.append(f"- kernel: {platform.system()} {platform.release()} ({platform.machine()})")
    if "binary" in machine:
        out.append(f"- chorus: {machine['binary'].strip()}, copied to RAW/chorus for every run")
    if machine:
        out.append(f"- load average (1/5/15 min) before: {machine.get('before', '?').strip()}; "
                   f"after: {machine.get('after', '?').strip()}")
    return out, machine


def write_page(path, lines, problems):
    """Writes the page atomically (temp file, rename), names each problem on stderr, and returns
    the script's exit status: 1 when a run had no result."""
    import sys
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines).rstrip() + "\n")
    os.replace(tmp, path)
    for p in problems:
        print(f"report.py: {p}", file=sys.stderr)
    return 1 if problems else 0
