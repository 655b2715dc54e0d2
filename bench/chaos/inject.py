"""An external fault injector for one chorus job (bench/chaos/run.sh, issue 15).

It waits until every eligible rank of the job writing to --dir has a process, then delivers
--count faults at random times: each picks a random live rank and sends it SIGKILL or SIGSTOP
(--kill-share of them kills), or, for a "ckpt" fault, waits until a checkpoint temporary appears
(--ckpt-glob, e.g. "ps/server*.ckpt.tmp.*" or "checkpoints/ckpt-*.pt.tmp.*", both written as
"<path>.tmp.<pid>" and renamed over <path>) and SIGKILLs the process whose pid ends its name.
A ckpt kill "landed" when the temporary still exists once that process is dead: the write was
cut short. Before that kill the checkpoint it would have replaced (the newest final file, or for
a shard "server<s>.ckpt") is hard-linked to --keep-prev-<i>, so the file that stayed in place
can be checked after the run (a rename never changes the old file's contents).

Which processes: those whose command line has the argument "output.dir=<dir>" (exactly that
argument, so ".../ps-1" never matches ".../ps-10") and whose environment has CHORUS_RANK; the
rank is that variable. Nothing else is ever signalled: each signal goes through a pidfd opened
before the process is checked again, so a pid reused in between cannot be hit. It exits when no
process of the job is left (or after --max-seconds), and writes a JSON log (--log):
{"faults": [{"t": seconds since the job's ranks appeared, "unix": ..., "rank", "pid", "signal",
"kind": "kill"|"stop"|"ckpt", "landed", "tmp", "prev", "prev_copy", "restart_count"}], ...}.
Standard library only.

usage: inject.py --dir DIR --ranks 0,1,2,3,4 --seed S --count 4 --window 1 6 [--ckpt 1]
                 [--ckpt-glob 'ps/server*.ckpt.tmp.*'] [--ckpt-after-final] [--log FILE]
"""

import argparse
import fnmatch
import json
import os
import random
import signal
import sys
import time


def read_proc(pid, name):
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return None


def proc_state(pid):
    stat = read_proc(pid, "stat")
    if stat is None:
        return None
    # "pid (comm) S ...": the state follows the last ')'.
    return stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3].decode()


class Job:
    def __init__(self, out_dir):
        self.arg = ("output.dir=" + out_dir).encode()

    def owns(self, pid):
        """(is a process of this job, its CHORUS_RANK or None, its CHORUS_RESTART_COUNT)."""
        cmd = read_proc(pid, "cmdline")
        if cmd is None or self.arg not in cmd.split(b"\0"):
            return False, None, None
        env = read_proc(pid, "environ") or b""
        rank = restart = elastic = None
        for kv in env.split(b"\0"):
            if kv.startswith(b"CHORUS_RANK="):
                rank = kv[len(b"CHORUS_RANK="):].decode(errors="replace")
            elif kv.startswith(b"CHORUS_ELASTIC_ID="):
                elastic = kv[len(b"CHORUS_ELASTIC_ID="):].decode(errors="replace")
            elif kv.startswith(b"CHORUS_RESTART_COUNT="):
                restart = kv[len(b"CHORUS_RESTART_COUNT="):].decode(errors="replace")
        # An elastic replacement may carry only its worker id; it is a rank process all the same.
        return True, rank if rank is not None else (f"id{elastic}" if elastic is not None else None), restart

    def scan(self):
        """(every process of the job, {rank: [pids of its live, not zombie, processes]}, the pids
        without a rank: the launcher and whatever runs it, such as timeout)."""
        members, ranks, outer = [], {}, []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            pid = int(d)
            if pid == os.getpid():
                continue
            mine, rank, _ = self.owns(pid)
            if not mine:
                continue
            state = proc_state(pid)
            if state is None or state in "ZX":
                continue
            members.append(pid)
            if rank is None:
                outer.append(pid)
            elif rank.isdigit():
                ranks.setdefault(int(rank), []).append(pid)
        return members, ranks, outer


def send(job, pid, sig, want_rank=None):
    """Signals pid through a pidfd if it is (still) a process of the job; returns its rank and
    restart count, or None when it is not one (nothing is sent then)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        mine, rank, restart = job.owns(pid)
        if not mine or rank is None or (want_rank is not None and rank != str(want_rank)):
            return None
        signal.pidfd_send_signal(fd, sig)
        return rank, restart
    except OSError:
        return None
    finally:
        os.close(fd)


def dead(pid):
    s = proc_state(pid)
    return s is None or s in "ZX"


def glob_files(out_dir, pattern):
    sub, pat = os.path.split(pattern)
    try:
        with os.scandir(os.path.join(out_dir, sub)) as it:
            return [os.path.join(out_dir, sub, e.name) for e in it if fnmatch.fnmatchcase(e.name, pat)]
    except OSError:
        return []


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True, help="the job's output.dir, exactly as on its command line")
    p.add_argument("--ranks", required=True, help="eligible ranks, comma-separated")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--count", type=int, default=4)
    p.add_argument("--window", type=float, nargs=2, default=[1.0, 6.0],
                   help="fault times are drawn in [A, B] s after the ranks appeared")
    p.add_argument("--ckpt", type=int, default=0, help="how many of the faults are ckpt faults")
    p.add_argument("--ckpt-glob", default="ps/server*.ckpt.tmp.*")
    p.add_argument("--ckpt-after-final", action="store_true",
                   help="arm a ckpt fault only once a final checkpoint exists (so one is there to keep)")
    p.add_argument("--ckpt-wait", type=float, default=20.0, help="longest wait for a temporary (s)")
    p.add_argument("--kill-share", type=float, default=2 / 3)
    p.add_argument("--settle", type=float, default=1.0,
                   help="after a fault, wait until every eligible rank runs again, then this long (s)")
    p.add_argument("--start-glob", default=None,
                   help="the clock starts once this file exists too (e.g. ps/worker0.jsonl: training began)")
    p.add_argument("--start-timeout", type=float, default=120.0)
    p.add_argument("--max-seconds", type=float, default=900.0)
    p.add_argument("--keep-prev", default=None, help="prefix for hard links to the checkpoint a ckpt kill left")
    p.add_argument("--log", default=None)
    a = p.parse_args()
    out_dir = a.dir
    job = Job(out_dir)
    eligible = [int(r) for r in a.ranks.split(",") if r.strip()]
    rng = random.Random(a.seed)
    t_begin = time.monotonic()
    log = {"dir": out_dir, "ranks": eligible, "seed": a.seed, "count": a.count, "faults": [], "notes": []}

    def write_log():
        if a.log:
            tmp = a.log + ".tmp"
            with open(tmp, "w") as f:
                json.dump(log, f, indent=1)
            os.replace(tmp, a.log)

    seen_outer = False

    def gone():
        """The job is over: its launcher has exited (or, if none was ever seen, every process)."""
        nonlocal seen_outer
        members, _, outer = job.scan()
        seen_outer = seen_outer or bool(outer)
        return not outer if seen_outer else not members

    # 1. Wait for the job: every eligible rank has a process (and the --start-glob file exists).
    seen = False
    while True:
        members, ranks, _ = job.scan()
        seen = seen or bool(members)
        if all(r in ranks for r in eligible) and (not a.start_glob or glob_files(out_dir, a.start_glob)):
            break
        if (seen and gone()) or time.monotonic() - t_begin > a.start_timeout:
            log["notes"].append("the job ended before its ranks all appeared" if seen and gone()
                                else f"the job's ranks did not all appear within {a.start_timeout} s")
            write_log()
            return 0
        time.sleep(0.02)
    t0 = time.monotonic()
    log["start_unix"] = time.time()

    kinds = ["ckpt"] * min(a.ckpt, a.count) + [
        "kill" if rng.random() < a.kill_share else "stop" for _ in range(a.count - min(a.ckpt, a.count))]
    rng.shuffle(kinds)
    times = sorted(rng.uniform(a.window[0], a.window[1]) for _ in kinds)

    def wait_until(deadline):
        """Sleeps until t0 + deadline; False when the job ended first."""
        while time.monotonic() - t0 < deadline:
            if gone():
                return False
            time.sleep(0.02)
        return True

    def wait_settled():
        """Until every eligible rank has one running (not stopped) process, then --settle s."""
        limit = time.monotonic() + 60
        while time.monotonic() < limit:
            if gone():
                return False
            _, ranks, _ = job.scan()
            if all(r in ranks and all(proc_state(q) not in ("T", "t") for q in ranks[r]) for r in eligible):
                return wait_until(time.monotonic() - t0 + a.settle)
            time.sleep(0.02)
        log["notes"].append("ranks still missing or stopped after 60 s; going on")
        return True

    for i, kind in enumerate(kinds):
        if not wait_until(times[i]) or not wait_settled():
            log["notes"].append(f"the job ended before fault {i + 1} of {len(kinds)}")
            break
        if time.monotonic() - t_begin > a.max_seconds:
            break
        rec = {"kind": kind}
        if kind == "ckpt":
            if a.ckpt_after_final:
                final_pat = a.ckpt_glob.split(".tmp.")[0]
                limit = time.monotonic() + a.ckpt_wait
                while not glob_files(out_dir, final_pat) and time.monotonic() < limit and not gone():
                    time.sleep(0.005)
            limit, hit = time.monotonic() + a.ckpt_wait, None
            polls = 0
            while time.monotonic() < limit:
                tmps = glob_files(out_dir, a.ckpt_glob)
                if tmps:
                    hit = tmps[0]
                    break
                polls += 1
                if polls % 200 == 0 and gone():
                    break
                time.sleep(0.002)
            rec.update(t=round(time.monotonic() - t0, 3), unix=time.time(), tmp=hit)
            if hit is None:
                rec.update(signal=None, landed=False, note="no checkpoint write seen")
                log["faults"].append(rec)
                write_log()
                continue
            tail = hit.rsplit(".tmp.", 1)[1]
            final = hit.rsplit(".tmp.", 1)[0]
            pid = int(tail) if tail.isdigit() else None
            # The checkpoint this write would replace: the shard file itself, or the newest
            # final trainer checkpoint beside it.
            prev = final if os.path.exists(final) else None
            if prev is None:
                finals = sorted(f for f in glob_files(out_dir, a.ckpt_glob.split(".tmp.")[0]) if ".tmp." not in f)
                prev = finals[-1] if finals else None
            prev_copy = None
            if prev and a.keep_prev:
                prev_copy = f"{a.keep_prev}-{i + 1}{os.path.splitext(prev)[1]}"
                try:
                    if os.path.exists(prev_copy):
                        os.unlink(prev_copy)
                    os.link(prev, prev_copy)
                    prev_ino = os.stat(prev_copy).st_ino
                except OSError as e:
                    prev_copy, prev_ino = None, None
                    rec["note"] = f"could not keep {prev}: {e}"
            sent = send(job, pid, signal.SIGKILL) if pid else None
            if sent is None:
                rec.update(pid=pid, signal=None, landed=False, prev=prev,
                           note="the writer's pid is not a process of this job")
                log["faults"].append(rec)
                write_log()
                continue
            limit = time.monotonic() + 5
            while not dead(pid) and time.monotonic() < limit:
                time.sleep(0.001)
            landed = dead(pid) and os.path.exists(hit)
            rec.update(pid=pid, rank=int(sent[0]) if sent[0].isdigit() else sent[0], restart_count=int(sent[1] or 0), signal="SIGKILL", landed=landed,
                       prev=prev, prev_copy=prev_copy)
            if prev_copy:
                try:  # the file in place is still the one kept (the cut write never replaced it)
                    rec["prev_in_place"] = os.stat(prev).st_ino == prev_ino
                except OSError:
                    rec["prev_in_place"] = False
        else:
            sig = signal.SIGKILL if kind == "kill" else signal.SIGSTOP
            _, ranks, _ = job.scan()
            live = [r for r in eligible if r in ranks]
            if not live:
                log["notes"].append(f"no live rank for fault {i + 1}")
                break
            rank = rng.choice(live)
            pid = ranks[rank][0]
            sent = send(job, pid, sig, want_rank=rank)
            rec.update(t=round(time.monotonic() - t0, 3), unix=time.time(), rank=rank, pid=pid,
                       signal=sig.name if sent else None, restart_count=int(sent[1] or 0) if sent else None)
            if not sent:
                rec["note"] = "the process went away before the signal"
        log["faults"].append(rec)
        write_log()

    # 2. Stay until the job is over (nothing to do; the launcher handles what was signalled).
    while not gone() and time.monotonic() - t_begin < a.max_seconds:
        time.sleep(0.1)
    log["end_unix"] = time.time()
    write_log()
    return 0


if __name__ == "__main__":
    sys.exit(main())
