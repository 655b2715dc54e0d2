"""The PyTorch DDP peer of `chorus train` for the data-parallel benchmark (bench/ddp/run.sh):
the same model, data, optimizer, schedule and sharding as bench/ddp/{mlp,cnn}.toml, trained
with torch.nn.parallel.DistributedDataParallel over the gloo backend on CPU.

  data      Fashion-MNIST read straight from the gzipped IDX files (no torchvision), as
            float32 [N, 1, 28, 28] normalized with mean 0.2860, std 0.3530; --limit-train N
            keeps the first N training samples.
  models    mlp: Flatten, Linear(784,512), ReLU, Linear(512,256), ReLU, Linear(256,10)
            cnn: [Conv2d(c_in,c,3,pad 1,no bias), BatchNorm2d(c), ReLU, MaxPool2d(2)] for c in
                 (32, 64), Flatten, Linear(64*7*7,128), ReLU, Linear(128,10)
  training  global batch --batch split evenly over W ranks (batch/W each), DistributedSampler
            (shuffle, seed 0), cross-entropy, SGD lr 0.05 momentum 0.9, cosine decay to 0 over
            the whole run without warmup: lr(step) = 0.5 lr0 (1 + cos(pi step / total)).
  threads   torch.set_num_threads(max(1, os.cpu_count() // W)) in every rank.

Measured: samples/s = samples processed by all ranks / the training loop's wall time (from a
barrier before the first step to a barrier after the last); test loss and accuracy over the
whole test split after training (each rank a shard, sums all-reduced); each rank's peak RSS
(getrusage ru_maxrss), max and mean over ranks. Rank 0 prints one JSON line:

  {"impl":"torch-ddp","model":"mlp","world":2,"samples_per_s":...,"test_acc":...,
   "test_loss":...,"peak_rss_mb_max":...,"peak_rss_mb_mean":...,"train_s":...,"steps":...}

usage: /usr/bin/python3 bench/ddp/torch_ddp.py --model mlp|cnn --world W [--epochs 1]
       [--batch 128] [--lr 0.05] [--limit-train N] [--limit-test N] [--data DIR]
It starts W processes itself (torch.multiprocessing, rendezvous on 127.0.0.1); started by
torchrun (RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set) it runs as that one rank.
"""

import argparse
import gzip
import json
import math
import os
import resource
import socket
import sys
import time

MEAN, STD = 0.2860, 0.3530
DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    """An IDX file (gzipped) as a uint8 torch tensor shaped by its header."""
    import torch

    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise SystemExit(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = math.prod(dims)
    if len(raw) - offset != count:
        raise SystemExit(f"{path}: {len(raw) - offset} data bytes, the header says {count}")
    return torch.frombuffer(bytearray(raw[offset:]), dtype=torch.uint8).reshape(dims)


def load_split(folder, train, limit):
    """(images float32 [N,1,28,28] normalized, labels int64 [N]); limit > 0 keeps the first N."""
    import torch

    prefix = "train" if train else "t10k"
    images = read_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"))
    if limit > 0:
        images, labels = images[:limit], labels[:limit]
    x = images.to(torch.float32).div_(255.0).sub_(MEAN).div_(STD).unsqueeze(1).contiguous()
    return x, labels.to(torch.int64)


def build_model(name):
    import torch.nn as nn

    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                             nn.Linear(256, 10))
    layers, c_in = [], 1
    for c in (32, 64):
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
        c_in = c
    layers += [nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10)]
    return nn.Sequential(*layers)


def worker(rank, world, args, init_method):
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data.distributed import DistributedSampler

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    torch.manual_seed(0)

    train_x, train_y = load_split(args.data, True, args.limit_train)
    test_x, test_y = load_split(args.data, False, args.limit_test)
    local_batch = args.batch // world

    model = DDP(build_model(args.model))  # broadcasts rank 0's parameters and buffers
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    # DistributedSampler only needs len(); it yields this rank's shard of the permutation.
    sampler = DistributedSampler(range(train_x.shape[0]), num_replicas=world, rank=rank, shuffle=True, seed=0)
    steps_per_epoch = math.ceil(len(sampler) / local_batch)
    total_steps = steps_per_epoch * args.epochs

    model.train()
    step, samples = 0, 0
    dist.barrier()
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), dtype=torch.int64)
        for idx in order.split(local_batch):
            for group in opt.param_groups:
                group["lr"] = 0.5 * args.lr * (1 + math.cos(math.pi * step / total_steps))
            x, y = train_x.index_select(0, idx), train_y.index_select(0, idx)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            samples += idx.numel()
    dist.barrier()
    train_s = time.perf_counter() - t0

    # Evaluation: rank r takes test samples r, r+W, ...; sums are all-reduced.
    net = model.module
    net.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
    with torch.no_grad():
        mine = torch.arange(rank, test_x.shape[0], world)
        for idx in mine.split(1000):
            logits = net(test_x.index_select(0, idx))
            y = test_y.index_select(0, idx)
            sums[0] += F.cross_entropy(logits, y, reduction="sum").item()
            sums[1] += (logits.argmax(1) == y).sum().item()
            sums[2] += idx.numel()
    dist.all_reduce(sums)

    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    rss_max = torch.tensor([rss_mb], dtype=torch.float64)
    rss_sum = rss_max.clone()
    dist.all_reduce(rss_max, op=dist.ReduceOp.MAX)
    dist.all_reduce(rss_sum)
    total_samples = torch.tensor([samples], dtype=torch.int64)
    dist.all_reduce(total_samples)
    train_s_max = torch.tensor([train_s], dtype=torch.float64)
    dist.all_reduce(train_s_max, op=dist.ReduceOp.MAX)

    if rank == 0:
        t = train_s_max.item()
        print(json.dumps({
            "impl": "torch-ddp", "model": args.model, "world": world,
            "samples_per_s": total_samples.item() / t,
            "test_acc": sums[1].item() / sums[2].item(),
            "test_loss": sums[0].item() / sums[2].item(),
            "peak_rss_mb_max": rss_max.item(), "peak_rss_mb_mean": rss_sum.item() / world,
            "train_s": t, "steps": step,
        }), flush=True)
    dist.barrier()
    dist.destroy_process_group()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    p.add_argument("--world", type=int, default=1, help="ranks (processes) to start")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=128, help="global batch, split evenly over the ranks")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--limit-train", type=int, default=0, help="keep the first N training samples (0: all)")
    p.add_argument("--limit-test", type=int, default=0, help="keep the first N test samples (0: all)")
    p.add_argument("--data", default=DEFAULT_DATA, help="folder with the gzipped IDX files")
    args = p.parse_args()

    env = os.environ
    torchrun = all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
    world = int(env["WORLD_SIZE"]) if torchrun else args.world
    if world < 1:
        p.error(f"--world {world}: need at least 1 rank")
    if args.batch % world != 0:
        p.error(f"--batch {args.batch} cannot be split evenly over {world} ranks; use a multiple of {world}")
    if args.epochs < 1:
        p.error("--epochs must be at least 1")
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        if not os.path.isfile(os.path.join(args.data, name)):
            p.error(f"{os.path.join(args.data, name)} is missing; install dataset-fashion-mnist or pass --data DIR")

    if torchrun:
        worker(int(env["RANK"]), world, args, "env://")
        return
    import torch.multiprocessing as mp

    init_method = f"tcp://127.0.0.1:{free_port()}"
    mp.spawn(worker, args=(world, args, init_method), nprocs=world, join=True)


if __name__ == "__main__":
    sys.exit(main())
