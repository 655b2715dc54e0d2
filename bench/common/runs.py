"""What the benchmark report scripts share: reading a run's saved output, why it failed, the
CPU's name and number formatting. Standard library only."""
import datetime
import os
import platform


def read(path):
    """The file's text, or "" when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


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


def page_header(title, command, raw):
    """The opening of a results page: its title, the command that wrote it, and the machine
    (CPU, kernel, the binary, load averages from RAW/machine.txt). Returns (lines, machine), where
    machine is machine.txt's "key: value" lines as a dict, for the page's own additions."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"# {title}\n",
           f"Written by `{command}` on {now}. Every number below is computed from the raw outputs that "
           "run collected; rerun the command to refresh this page and its plot instead of editing them.\n",
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
