"""What the benchmark report scripts share: reading a run's saved output, why it failed, the
CPU's name and number formatting. Standard library only."""
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
