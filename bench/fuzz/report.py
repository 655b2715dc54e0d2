#!/usr/bin/env python3
"""Writes bench/results/fuzz.md from one `bash bench/fuzz/run.sh` run: per fuzz target the
executions, the fuzzing time, the speed, the coverage, the corpus before and after, and what this
run found (from RAW/logs/NAME.log, RAW/NAME.rc and RAW/artifacts-NAME/); then the findings of
earlier runs and their fixes (bench/fuzz/findings.md). Standard library only."""
import argparse
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
import runs  # noqa: E402

SRC = runs.SOURCE_DIR


def last(pattern, text, cast=str):
    found = re.findall(pattern, text, re.MULTILINE)
    return cast(found[-1]) if found else None


def describe(target):
    """What the target fuzzes, from its opening comment ("the parameter server's message header"),
    and the first library file it builds, from its fuzz-sources line."""
    text = runs.read(os.path.join(SRC, "fuzz", f"{target}_fuzz.cc"))
    lines = []
    for line in text.splitlines():
        if not line.startswith("//") or not line[2:].strip():
            break
        lines.append(line[2:].strip())
    sentence = re.sub(r"^libFuzzer target for ", "", " ".join(lines))
    sentence = re.sub(r"\s*\(src/[^)]*\)", "", sentence)
    cut = re.search(r"[.:](\s|$)|, which ", sentence)
    what = sentence[: cut.start()] if cut else sentence
    first = re.search(r"^// fuzz-sources:\s*(\S+)", text, re.MULTILINE)
    return what, first.group(1) if first else "?"


def seeds(target):
    folder = os.path.join(SRC, "fuzz", "corpus", target)
    try:
        names = [n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))]
    except OSError:
        return 0, 0, 0
    size = sum(os.path.getsize(os.path.join(folder, n)) for n in names)
    return len(names), size, len([n for n in names if n.startswith("finding-")])


def fmt_bytes(n):
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"


def corpus_bytes(text):
    """libFuzzer's "corp: UNITS/SIZE" size ("5220b", "40Kb", "1Mb") in bytes."""
    m = re.match(r"(\d+)([KM]?)b", text or "")
    if not m:
        return None
    return int(m.group(1)) * {"": 1, "K": 1024, "M": 1024 * 1024}[m.group(2)]


def finding(raw, target, log):
    """What this run found: the failed invariant or sanitizer report, and the saved input."""
    art = os.path.join(raw, f"artifacts-{target}")
    try:
        files = sorted(os.listdir(art))
    except OSError:
        files = []
    what = (last(r"^(\S+_fuzz: .*)$", log) or last(r"^==\d+==\s*ERROR: (.*)$", log)
            or last(r"^SUMMARY: (.*)$", log) or last(r"(runtime error: .*)$", log))
    return what, files


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--raw", required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("targets", nargs="+")
    a = ap.parse_args()

    lines, machine = runs.page_header("Fuzzing the decoders", a.command, a.raw)
    lines = [line.replace(" and its plot", "") for line in lines]  # this page has none
    if "compiler" in machine:
        lines.append(f"- compiler: {machine['compiler'].strip()}; libFuzzer with AddressSanitizer and "
                     "UndefinedBehaviorSanitizer (fuzz/build.sh), one process, one core")
    lines += ["",
              "Every decoder that reads bytes from another process or from a file has a libFuzzer target in "
              "fuzz/, a seed corpus in fuzz/corpus/NAME/ (made by the target itself: `bash fuzz/make_seeds.sh`) "
              "and a ctest, NAME_fuzz_test (tests/fuzz/fuzz_target.sh), that fuzzes it for 15 s in `make test`. "
              f"`make fuzz` runs each for longer, here {a.seconds:g} s, one after the other. A target fails on a "
              "crash, a sanitizer report, a leak, a timeout, an allocation over 2 GB, an exception the decoder "
              "must not throw, or a broken round-trip invariant (each target's opening comment lists its "
              "invariants).",
              "",
              "## This run",
              "",
              "| target | what it decodes | code | executions | time | exec/s | coverage (edges / features) | "
              "seeds | corpus after | result |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    problems, found = [], []
    for t in a.targets:
        log = runs.read(os.path.join(a.raw, "logs", f"{t}.log"))
        rc = runs.read(os.path.join(a.raw, f"{t}.rc")).strip()
        execs = last(r"^stat::number_of_executed_units:\s*(\d+)", log, int)
        speed = last(r"^stat::average_exec_per_sec:\s*(\d+)", log, int)
        took = last(r"^Done \d+ runs in (\d+) second", log, int)
        cov = last(r"cov: (\d+)", log, int)
        ft = last(r"ft: (\d+)", log, int)
        corp = re.findall(r"corp: (\d+)/(\S+)", log)
        n_seeds, seed_bytes, n_regress = seeds(t)
        seed_text = f"{n_seeds} ({fmt_bytes(seed_bytes)})" + (f", {n_regress} from findings" if n_regress else "")
        after = "—"
        if corp:
            units, size = corp[-1]
            b = corpus_bytes(size)
            after = f"{units} ({fmt_bytes(b) if b is not None else size})"
        if rc == "0" and execs is not None:
            result = "no finding"
        else:
            what, files = finding(a.raw, t, log)
            result = "**FINDING**" if files or what else f"failed (exit {rc or '?'})"
            found.append((t, what, files))
            if execs is None:
                problems.append(f"{t}: no libFuzzer statistics in {a.raw}/logs/{t}.log (exit {rc or '?'})")
        what, code = describe(t)
        lines.append(f"| {t} | {what} | `{code}` | {runs.fmt(execs, ',')} | "
                     f"{runs.fmt(took, 'd')} s | {runs.fmt(speed, ',')} | {runs.fmt(cov, 'd')} / {runs.fmt(ft, 'd')} | "
                     f"{seed_text} | {after} | {result} |")
    lines += ["",
              "Executions and exec/s are libFuzzer's final statistics; time is its own count of whole seconds. "
              "Seeds are the committed corpus (inputs of past findings included, as `finding-*`); the corpus "
              "after is what libFuzzer kept in its scratch copy, the seeds merged with the inputs that reached "
              "new coverage. Reproduce one target with `bash fuzz/run.sh NAME OUT SECONDS`.",
              ""]
    if found:
        lines += ["### Found by this run", ""]
        for t, what, files in found:
            lines.append(f"- {t}: {what or 'see the log'}; input(s) saved as "
                         f"{', '.join(files) if files else '(none)'} in {a.raw}/artifacts-{t}/ "
                         f"(replay: `{a.raw}/{t}_fuzz FILE`)")
        lines.append("")
    lines += ["## Findings so far and their fixes", ""]
    findings = runs.read(os.path.join(SRC, "bench", "fuzz", "findings.md")).strip()
    lines.append(findings if findings else "(bench/fuzz/findings.md is missing)")
    return runs.write_page(a.out, lines, problems)


if __name__ == "__main__":
    sys.exit(main())
