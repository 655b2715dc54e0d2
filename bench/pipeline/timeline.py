"""One pipelined training step from a `chorus train --trace` file, drawn as a timeline: one lane
per stage, the forwards, backwards (B and W halves) and the optimizer step as coloured boxes
labelled with their micro-batch, the waits for activations, gradients and sends in grey. The
picture a user expects for a pipeline schedule, from the spans the executor recorded
(src/chorus/parallel/pipeline/executor.h; lanes "compute" and "pipeline" of each rank).

Measured, per stage: busy = the summed compute spans of the step (forward, backward, backward
input, backward weight, and the asynchronous schedules' weight updates, "optimizer step"); the
step's window = from the earliest span of the step on any stage to the latest end; bubble =
1 - busy / window. Printed as one JSON line:

  {"step": 5, "stages": 2, "window_s": 0.41, "bubble": [0.18, 0.17], "busy_s": [0.33, 0.34]}

With --last K: the same for each of the trace's last K steps, and "bubble" is each stage's
median over them ("bubble_steps" lists every step's; "steps" the steps measured).

Replayed ("replay", each stage's median over the steps measured, with --last): the step's own
forward and backward spans, each stage's in the order it ran them and each with the duration it
took, replayed with free transfers: an action starts as soon as its stage is free and the action
it depends on has ended (the forward of micro-batch i on the virtual stage before, the backward
on the virtual stage after, or this stage's forward on the last). Replayed minus the formula is
what the measured op times add (unequal stages, op-to-op variation); the trace minus replayed is
what transfers, waits and the executor add. The chunk of an interleaved action is its
occurrence: a rank's first forward of micro-batch i is chunk 0, its first backward the last chunk. "op_ms" is the
mean duration in milliseconds of each compute action kind (forward, backward, backward input,
backward weight) over every stage and the steps measured: the costs to simulate the schedule
with (`chorus pipeline show --costs F,B,W`).

usage: /usr/bin/python3 bench/pipeline/timeline.py TRACE.json [--step N | --last K] [--dp D] [--svg OUT.svg]
  --step N  the global step to draw (default: the last step in the trace)
  --last K  measure the last K steps (the SVG draws the last of them)
  --dp D    data-parallel replicas of the run (world rank = stage * D + replica); replica 0 is drawn
Standard library only.
"""

import argparse
import json
import os
import statistics
import sys

COMPUTE = ("forward", "backward", "backward input", "backward weight", "optimizer step")
COLORS = {"forward": "#4c78a8", "backward": "#e45756", "backward input": "#f58518", "backward weight": "#54a24b",
          "optimizer": "#9467bd", "optimizer step": "#9467bd"}
WAIT_COLOR = "#d9d9d9"
TAG = {"forward": "F", "backward": "b", "backward input": "B", "backward weight": "W"}


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"timeline.py: cannot read the trace {path}: {e}")
    events = doc.get("traceEvents", doc) if isinstance(doc, dict) else doc
    return [e for e in events if isinstance(e, dict) and e.get("ph") == "X"]


def step_spans(events, step, dp):
    """{stage: [(name, start_us, end_us, micro_batch or None)]} of `step`, replica 0."""
    out = {}
    for e in events:
        args = e.get("args") or {}
        if args.get("step") != step or "stage" not in args:
            continue
        if int(e.get("pid", 0)) % dp != 0:
            continue
        start = float(e["ts"])
        out.setdefault(int(args["stage"]), []).append((e.get("name", "?"), start, start + float(e.get("dur", 0)),
                                                       args.get("micro_batch")))
    return out


def measure(spans):
    lo = min(s[1] for v in spans.values() for s in v)
    hi = max(s[2] for v in spans.values() for s in v)
    window = max(hi - lo, 1e-9)
    stages = sorted(spans)
    busy = [sum(s[2] - s[1] for s in spans[st] if s[0] in COMPUTE) for st in stages]
    return lo, hi, window, stages, busy


def replay(spans):
    """Each stage's bubble when the step's compute spans are replayed with free transfers (see the
    module doc), or None where the spans do not form a pipeline (an action whose dependency
    never runs)."""
    stages = sorted(spans)
    p = len(stages)
    ops = {}
    for st in stages:
        seen = {}
        seq = []
        for name, a, b, mb in sorted(spans[st], key=lambda s: s[1]):
            if name not in TAG or mb is None:
                continue
            kind = "F" if name == "forward" else "W" if name == "backward weight" else "B"
            k = seen.get((kind, mb), 0)
            seen[(kind, mb)] = k + 1
            seq.append((kind, mb, k, b - a))
        ops[st] = seq
    chunks = 1 + max((k for seq in ops.values() for _, _, k, _ in seq), default=0)
    last = chunks * p - 1
    ended, free, busy, at = {}, dict.fromkeys(stages, 0.0), dict.fromkeys(stages, 0.0), dict.fromkeys(stages, 0)
    left = sum(len(seq) for seq in ops.values())
    while left:
        moved = False
        for row, st in enumerate(stages):
            seq = ops[st]
            while at[st] < len(seq):
                kind, mb, k, dur = seq[at[st]]
                v = (k if kind == "F" else chunks - 1 - k) * p + row
                if kind == "F":
                    dep = ("F", v - 1, mb) if v > 0 else None
                elif kind == "B":
                    dep = ("B", v + 1, mb) if v < last else ("F", v, mb)
                else:
                    dep = ("B", v, mb)
                if dep is not None and dep not in ended:
                    break
                start = max(free[st], ended[dep] if dep else 0.0)
                free[st] = ended[(kind, v, mb)] = start + dur
                busy[st] += dur
                at[st] += 1
                left -= 1
                moved = True
        if not moved:
            return None
    span = max(max(free.values()), 1e-9)
    return [1 - busy[st] / span for st in stages]


def svg(spans, lo, window, stages, busy, title):
    width, lane, left, top = 1100, 34, 80, 40
    scale = (width - left - 20) / window
    height = top + lane * len(stages) + 60
    el = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">',
          f'<rect width="{width}" height="{height}" fill="white"/>',
          f'<text x="{left}" y="22" font-size="14">{title}</text>']
    for row, st in enumerate(stages):
        y = top + row * lane
        bubble = 1 - busy[row] / window
        el.append(f'<text x="6" y="{y + lane / 2 + 4:.1f}" font-size="12">stage {st}</text>')
        el.append(f'<text x="{width - 14}" y="{y + lane / 2 + 4:.1f}" font-size="10" text-anchor="end">'
                  f'{100 * bubble:.0f}% idle</text>')
        for name, a, b, mb in sorted(spans[st], key=lambda s: (s[0] in COMPUTE, s[1])):
            x, w = left + (a - lo) * scale, max((b - a) * scale, 0.5)
            color = COLORS.get(name, WAIT_COLOR)
            h = lane - 8 if name in COMPUTE or name in COLORS else (lane - 8) / 2
            el.append(f'<rect x="{x:.2f}" y="{y + 4:.1f}" width="{w:.2f}" height="{h:.1f}" fill="{color}" '
                      f'stroke="white" stroke-width="0.5"><title>{name}'
                      f'{"" if mb is None else f" micro-batch {mb}"}: {(b - a) / 1000:.2f} ms</title></rect>')
            if name in TAG and mb is not None and w > 16:
                el.append(f'<text x="{x + w / 2:.1f}" y="{y + lane / 2 + 4:.1f}" font-size="10" fill="white" '
                          f'text-anchor="middle">{TAG[name]}{mb}</text>')
    y = top + lane * len(stages) + 20
    x = left
    for name, color in (("forward", COLORS["forward"]), ("backward", COLORS["backward"]),
                        ("backward input (B)", COLORS["backward input"]),
                        ("backward weight (W)", COLORS["backward weight"]), ("optimizer", COLORS["optimizer"]),
                        ("waiting", WAIT_COLOR)):
        el.append(f'<rect x="{x}" y="{y}" width="12" height="12" fill="{color}"/>')
        el.append(f'<text x="{x + 16}" y="{y + 10}" font-size="11">{name}</text>')
        x += 30 + 7 * len(name)
    el.append(f'<text x="{left}" y="{y + 32}" font-size="11">{window / 1000:.1f} ms from the first span to the '
              f'last</text>')
    el.append("</svg>")
    return "\n".join(el) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--step", type=int, default=None)
    ap.add_argument("--last", type=int, default=None)
    ap.add_argument("--dp", type=int, default=1)
    ap.add_argument("--svg", default=None)
    ap.add_argument("--title", default=None)
    a = ap.parse_args()
    if a.dp < 1:
        raise SystemExit("timeline.py: --dp must be at least 1")
    if a.last is not None and (a.last < 1 or a.step is not None):
        raise SystemExit("timeline.py: --last K needs K >= 1 and no --step")
    events = load(a.trace)
    steps = sorted({(e.get("args") or {}).get("step") for e in events
                    if isinstance((e.get("args") or {}).get("step"), int) and "stage" in (e.get("args") or {})})
    if not steps:
        raise SystemExit(f"timeline.py: {a.trace} has no pipeline spans (spans with a step and a stage); "
                         "was it written by `chorus train --trace` with parallel.pp > 1?")
    step = a.step if a.step is not None else steps[-1]
    spans = step_spans(events, step, a.dp)
    if not spans:
        raise SystemExit(f"timeline.py: step {step} is not in {a.trace} (its steps: {steps[0]}..{steps[-1]})")
    lo, _, window, stages, busy = measure(spans)
    result = {"step": step, "stages": len(stages), "window_s": window / 1e6,
              "bubble": [round(1 - b / window, 4) for b in busy], "busy_s": [b / 1e6 for b in busy]}
    chosen = steps[-a.last:] if a.last is not None else [step]
    durations = {}
    for st in chosen:
        for spans_of_stage in step_spans(events, st, a.dp).values():
            for name, start, end, _ in spans_of_stage:
                if name in TAG:
                    durations.setdefault(name, []).append(end - start)
    result["op_ms"] = {k: round(statistics.mean(v) / 1e3, 3) for k, v in sorted(durations.items())}
    if a.last is not None:
        per_step, replayed = [], []
        for st in chosen:
            sp = step_spans(events, st, a.dp)
            _, _, w, stg, b = measure(sp)
            if len(stg) != len(stages):
                raise SystemExit(f"timeline.py: step {st} has spans of {len(stg)} stages, step {step} of {len(stages)}")
            per_step.append([1 - x / w for x in b])
            replayed.append(replay(sp))
        result["steps"] = chosen
        result["bubble_steps"] = [[round(x, 4) for x in row] for row in per_step]
        result["bubble"] = [round(statistics.median(row[i] for row in per_step), 4) for i in range(len(stages))]
        if all(row is not None for row in replayed):
            result["replay"] = [round(statistics.median(row[i] for row in replayed), 4) for i in range(len(stages))]
    print(json.dumps(result))
    if a.svg:
        title = a.title or f"step {step}: {len(stages)} stages ({os.path.basename(a.trace)})"
        with open(a.svg, "w", encoding="utf-8") as f:
            f.write(svg(spans, lo, window, stages, busy, title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
