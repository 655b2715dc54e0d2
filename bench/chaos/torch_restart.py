"""The restart-all strategy of torchrun, for bench/chaos: PyTorch DDP (gloo, CPU) trains the MLP
of bench/ddp on Fashion-MNIST with a checkpoint every --checkpoint-every steps; one worker kills
itself with SIGKILL as it starts step --kill-step; the driver, as torchrun's agent does, sees
the failure, stops every other worker, starts all of them again, and they resume from the last
checkpoint. Debian's torchrun (python3-torch 1.13 on Python 3.11) fails before it starts any
worker, so this script does what it would do.

  model, data, optimizer: as bench/ddp/torch_ddp.py (MLP 784-512-256-10, SGD lr 0.05 momentum
  0.9, constant lr), global batch --batch over --world ranks, DistributedSampler (seed 0).
  checkpoint: rank 0 writes model, optimizer and step with torch.save to a temporary file and
  renames it over out/ckpt.pt.
  timing: the victim writes out/kill.json {"unix": ...} just before it kills itself; rank 0
  appends {"step": completed steps, "unix": ..., "attempt": n} to out/progress.jsonl after
  every step. Time lost = the first time step kill_step + 1 completes again - the kill.

Prints one JSON line: {"impl": "torch-restart-all", "world", "kill_step", "checkpoint_every",
"kill_unix", "recovered_unix", "lost_s", "restarts", "total_s"}.

usage: python3 bench/chaos/torch_restart.py --world 4 --steps 50 --checkpoint-every 10
       --kill-rank 2 --kill-step 25 --out DIR [--batch 840] [--limit-train 42000]
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "ddp"))


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(a):
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data.distributed import DistributedSampler
    import torch_ddp

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world)
    torch.manual_seed(0)
    train_x, train_y = torch_ddp.load_split(a.data, True, a.limit_train)
    model = DDP(torch_ddp.build_model("mlp"))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ckpt = os.path.join(a.out, "ckpt.pt")
    step = 0
    if os.path.exists(ckpt):
        state = torch.load(ckpt)
        model.module.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    local = a.batch // world
    sampler = DistributedSampler(range(train_x.shape[0]), num_replicas=world, rank=rank, shuffle=True, seed=0,
                                 drop_last=True)
    per_epoch = len(sampler) // local
    progress = open(os.path.join(a.out, "progress.jsonl"), "a") if rank == 0 else None
    while step < a.steps:
        epoch, at = divmod(step, per_epoch)
        sampler.set_epoch(epoch)
        idx = torch.tensor(list(sampler), dtype=torch.int64)[at * local:(at + 1) * local]
        if a.attempt == 0 and rank == a.kill_rank and step == a.kill_step:
            with open(os.path.join(a.out, "kill.json"), "w") as f:
                json.dump({"unix": time.time()}, f)
            os.kill(os.getpid(), signal.SIGKILL)
        loss = F.cross_entropy(model(train_x.index_select(0, idx)), train_y.index_select(0, idx))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if progress:
            progress.write(json.dumps({"step": step, "unix": time.time(), "attempt": a.attempt}) + "\n")
            progress.flush()
        if rank == 0 and step % a.checkpoint_every == 0:
            tmp = ckpt + ".tmp"
            torch.save({"model": model.module.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
            os.replace(tmp, ckpt)
    dist.barrier()
    dist.destroy_process_group()


def driver(a):
    os.makedirs(a.out, exist_ok=True)
    for name in ("ckpt.pt", "progress.jsonl", "kill.json"):
        if os.path.exists(os.path.join(a.out, name)):
            os.remove(os.path.join(a.out, name))
    t0 = time.time()
    attempt = 0
    while True:
        env = dict(os.environ, WORLD_SIZE=str(a.world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        procs = []
        for r in range(a.world):
            args = [sys.executable, os.path.abspath(__file__), "--worker", "--attempt", str(attempt)]
            args += [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items()
                     if k not in ("worker", "attempt") and v is not None]
            procs.append(subprocess.Popen(args, env=dict(env, RANK=str(r)), start_new_session=True))
        failed = False
        while True:
            codes = [p.poll() for p in procs]
            if any(c not in (None, 0) for c in codes):
                failed = True
                break
            if all(c == 0 for c in codes):
                break
            time.sleep(0.01)
        if not failed:
            break
        # torchrun's agent: stop every worker, then start them all again.
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.time() + 5
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        attempt += 1
        if attempt > a.max_restarts:
            print(json.dumps({"impl": "torch-restart-all", "error": f"still failing after {attempt} restarts"}))
            return 1
    total = time.time() - t0
    with open(os.path.join(a.out, "kill.json")) as f:
        kill = json.load(f)["unix"]
    recovered = None
    with open(os.path.join(a.out, "progress.jsonl")) as f:
        for line in f:
            e = json.loads(line)
            if e["attempt"] > 0 and e["step"] == a.kill_step + 1:
                recovered = e["unix"]
                break
    print(json.dumps({"impl": "torch-restart-all", "world": a.world, "kill_step": a.kill_step,
                      "checkpoint_every": a.checkpoint_every, "kill_unix": kill, "recovered_unix": recovered,
                      "lost_s": None if recovered is None else recovered - kill, "restarts": attempt,
                      "total_s": total}), flush=True)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", type=int, default=4)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--kill-rank", type=int, default=2)
    p.add_argument("--kill-step", type=int, default=25)
    p.add_argument("--batch", type=int, default=840)
    p.add_argument("--limit-train", type=int, default=42000)
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--out", required=True)
    p.add_argument("--max-restarts", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--attempt", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a)
        return 0
    return driver(a)


if __name__ == "__main__":
    sys.exit(main())
