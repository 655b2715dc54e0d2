"""The pipeline benchmark's PyTorch side (bench/pipeline/run.sh): the GPT of
bench/model-parallel/gpt_torch.py (untied head), laid out as one nn.Sequential (embedding, the
blocks, the final LayerNorm and head) and cut into two partitions where chorus cut it (the
start record's pp_partition of a chorus run, --split-from), trained under PyTorch's own
pipeline, torch.distributed.pipeline.sync.Pipe (GPipe: all forwards of the micro-batches, then
all backwards), with --chunks micro-batches and AdamW.

Pipe needs the RPC framework (a one-process group here) and places each partition on a device.
On a CPU-only machine both partitions are on the one "cpu" device, and Pipe runs one worker
thread per device, so the partitions take turns on one thread: Pipe cannot overlap them on CPU.
The process uses --threads torch threads (run.sh: 2, the machine's cores, as chorus's 2 workers
x 1 thread). If Pipe cannot run, the error is printed and the exit status is 1.

Measured: tokens/s = steps * batch * context / the wall time of the training steps. Prints one
JSON line (and writes it to --json-out):
  {"impl": "torch-pipe", "partition": [4, 4], "chunks": 8, "tokens_per_s": ..., "loss": ...}

usage: /usr/bin/python3 bench/pipeline/pipe_torch.py [--layers 6] [--heads 4] [--embed 128]
       [--context 128] [--batch 32] [--seed 0] [--lr 1e-3] [--beta1 0.9] [--beta2 0.99]
       [--eps 1e-8] [--weight-decay 0] [--chunks 8] [--steps 12] [--threads 2]
       [--split-from METRICS.jsonl | --partition 4,4] [--data DIR] [--json-out PATH]
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "model-parallel"))
import gpt_torch  # noqa: E402


def partition_from(path):
    """The start record's pp_partition of a chorus metrics.jsonl."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                part = rec.get("pp_partition") if rec.get("event") == "start" else None
                if isinstance(part, str):  # chorus writes it as text, "[4, 4]"
                    part = json.loads(part)
                if isinstance(part, list):
                    return [int(c) for c in part]
    except (OSError, ValueError) as e:
        raise SystemExit(f"pipe_torch.py: cannot read {path}: {e}")
    raise SystemExit(f"pipe_torch.py: {path} has no start record with pp_partition")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("layers", 6), ("heads", 4), ("embed", 128), ("context", 128), ("batch", 32),
                          ("seed", 0), ("chunks", 8), ("steps", 12), ("threads", 2)):
        p.add_argument(f"--{name}", type=int, default=default)
    for name, default in (("lr", 1e-3), ("beta1", 0.9), ("beta2", 0.99), ("eps", 1e-8), ("weight-decay", 0.0)):
        p.add_argument(f"--{name}", type=float, default=default)
    p.add_argument("--split-from", default="")
    p.add_argument("--partition", default="")
    p.add_argument("--data", default=gpt_torch.DEFAULT_DATA)
    p.add_argument("--json-out", default="")
    args = p.parse_args()
    if args.batch % args.chunks:
        p.error(f"--batch {args.batch} is not a multiple of --chunks {args.chunks}")
    if args.split_from:
        partition = partition_from(args.split_from)
    elif args.partition:
        partition = [int(c) for c in args.partition.split(",")]
    else:
        partition = [(args.layers + 2) // 2, args.layers + 2 - (args.layers + 2) // 2]
    if sum(partition) != args.layers + 2 or min(partition) < 1:
        raise SystemExit(f"pipe_torch.py: partition {partition} must have counts >= 1 summing to layers + 2 = "
                         f"{args.layers + 2}")

    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    args.untied, args.dropout = True, 0.0
    torch.manual_seed(args.seed)
    gpt = gpt_torch.build_model(args)

    class Embed(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = gpt.wte, gpt.wpe

        def forward(self, ids):
            pos = torch.arange(ids.shape[1], dtype=torch.int64)
            return self.wte(ids) + self.wpe(pos).unsqueeze(0)

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.lnf, self.lm_head = gpt.lnf, gpt.lm_head

        def forward(self, x):
            return self.lm_head(self.lnf(x))

    layers = [Embed()] + list(gpt.h) + [Head()]
    parts, at = [], 0
    for count in partition:
        parts.append(nn.Sequential(*layers[at:at + count]))
        at += count

    train_names, _ = gpt_torch.corpus_files(args.data)
    train = gpt_torch.load_bytes(args.data, train_names)
    result = {"impl": "torch-pipe", "partition": partition, "chunks": args.chunks, "threads": args.threads,
              "torch": torch.__version__}
    try:
        import torch.distributed.rpc as rpc
        from torch.distributed.pipeline.sync import Pipe

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        rpc.init_rpc("pipe", rank=0, world_size=1)
        model = Pipe(nn.Sequential(*parts), chunks=args.chunks)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps,
                                weight_decay=args.weight_decay)
        model.train()
        loss_value = float("nan")
        t0 = time.perf_counter()
        for step in range(args.steps):
            ids, targets = gpt_torch.step_windows(train, args.batch, args.context, args.seed, step)
            logits = model(ids).local_value()
            loss = F.cross_entropy(logits.reshape(-1, gpt_torch.VOCAB), targets.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_value = loss.item()
        train_s = time.perf_counter() - t0
        rpc.shutdown()
    except Exception as e:  # Pipe's own failure is the result to report
        result["error"] = f"{type(e).__name__}: {e}"
        print(json.dumps(result))
        if args.json_out:
            with open(args.json_out, "w", encoding="utf-8") as f:
                f.write(json.dumps(result) + "\n")
        print(f"pipe_torch.py: torch.distributed.pipeline.sync.Pipe failed: {result['error']}", file=sys.stderr)
        return 1
    result.update({"steps": args.steps, "train_s": train_s, "loss": loss_value,
                   "tokens_per_s": args.steps * args.batch * args.context / train_s})
    print(json.dumps(result))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
