"""The Gloo peer of `chorus bench collectives --op allreduce`: torch.distributed all_reduce
(backend gloo, float32, sum, in place on CPU tensors) over a sweep of sizes, measured and
checked exactly as chorus measures itself (see tools/chorus/bench_collectives.cc):

  1. per size, zeros, one call (warm-up), then one timed call whose slowest-rank time sets
     warmup (~0.05 s worth, at most 20) and iterations (~0.25 s worth, 5 to 10000) unless
     --warmup/--iters say otherwise;
  2. warmup, a barrier, the timed loop; each rank's mean per call, maximum over ranks;
  3. v(r, i) = (r + i) mod 4, one more call, elements that differ from sum_r v(r, i) counted
     and summed over ranks.

Rank 0 prints one row per size: bytes count dtype algo time_us algbw_GBps busbw_GBps wrong,
busbw = algbw * 2(n-1)/n (nccl-tests; GB = 1e9 bytes).

Runs with Debian's python3-torch: /usr/bin/python3 gloo_allreduce.py --ranks 2
It starts --ranks processes itself (torch.multiprocessing), rendezvous on 127.0.0.1.
Exits 1 if any element was wrong.
"""

import argparse
import os
import re
import socket
import sys
import time

K_WARMUP_SECONDS = 0.05
K_TIMED_SECONDS = 0.25
K_MAX_AUTO_ITERS = 10000
K_MIN_AUTO_ITERS = 5
K_MAX_AUTO_WARMUP = 20


def parse_size(text):
    m = re.fullmatch(r"(\d+)([kKmMgG]?)(i?[bB])?", text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size '{text}' (use 4096, 4K, 64M, 1G)")
    shift = {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]
    return int(m.group(1)) << shift


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clamp(v, lo, hi):
    return max(lo, min(hi, v))


def worker(rank, args, port, result_queue):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    n = args.ranks
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=n)

    def max_over_ranks(v):
        t = torch.tensor([v], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def sum_over_ranks(v):
        t = torch.tensor([v], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return int(t.item())

    bus_factor = 2.0 * (n - 1) / n
    wrong_total = 0
    if rank == 0:
        print(f"# gloo_allreduce: torch {torch.__version__} distributed all_reduce, backend gloo, in place, "
              f"float32 sum, {n} ranks, iters {'given' if args.iters else 'auto'}, "
              f"warmup {'given' if args.warmup is not None else 'auto'}, check {'on' if args.check else 'off'}")
        print("# time_us: mean per call over the timed iterations, slowest rank; bandwidths in GB/s (1e9 B/s)")
        print(f"{'bytes':>12} {'count':>12} {'dtype':>9} {'algo':>6} {'time_us':>12} {'algbw_GBps':>11} "
              f"{'busbw_GBps':>11} {'wrong':>7}", flush=True)
    sum4 = torch.tensor([float(sum((r + m) % 4 for r in range(n))) for m in range(4)], dtype=torch.float32)
    nbytes = args.min_bytes
    while nbytes <= args.max_bytes:
        count = nbytes // 4
        buf = torch.zeros(count, dtype=torch.float32)
        dist.all_reduce(buf)
        t0 = time.perf_counter()
        dist.all_reduce(buf)
        probe = max(max_over_ranks(time.perf_counter() - t0), 1e-7)
        warmup = args.warmup if args.warmup is not None else clamp(int(K_WARMUP_SECONDS / probe), 0, K_MAX_AUTO_WARMUP)
        iters = args.iters if args.iters else clamp(int(K_TIMED_SECONDS / probe), K_MIN_AUTO_ITERS, K_MAX_AUTO_ITERS)
        for _ in range(warmup):
            dist.all_reduce(buf)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(buf)
        time_s = max_over_ranks((time.perf_counter() - t0) / iters)

        wrong = -1
        if args.check:
            idx = torch.arange(count, dtype=torch.int64)
            buf.copy_(((idx + rank) % 4).to(torch.float32))
            dist.all_reduce(buf)
            mine = int((buf != sum4[idx % 4]).sum().item())
            wrong = sum_over_ranks(mine)
            wrong_total += wrong
        if rank == 0:
            algbw = nbytes / time_s / 1e9
            wrong_text = str(wrong) if wrong >= 0 else "-"
            print(f"{nbytes:>12} {count:>12} {'float32':>9} {'gloo':>6} {time_s * 1e6:>12.2f} {algbw:>11.3f} "
                  f"{algbw * bus_factor:>11.3f} {wrong_text:>7}", flush=True)
        if nbytes > args.max_bytes // 2:
            break
        nbytes *= 2
    dist.barrier()
    dist.destroy_process_group()
    result_queue.put(wrong_total if rank == 0 else 0)


def main():
    p = argparse.ArgumentParser(description="torch.distributed/gloo all-reduce sweep, rows like chorus bench")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--min-bytes", type=parse_size, default=4096)
    p.add_argument("--max-bytes", type=parse_size, default=64 << 20)
    p.add_argument("--iters", type=int, default=0, help="timed iterations per size (default: ~0.25 s worth)")
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations (default: ~0.05 s worth, <= 20)")
    p.add_argument("--check", type=int, choices=(0, 1), default=1)
    args = p.parse_args()
    if args.ranks < 1 or args.min_bytes < 4 or args.min_bytes > args.max_bytes:
        p.error("need --ranks >= 1 and 4 <= --min-bytes <= --max-bytes")
    try:
        import torch.multiprocessing as mp
    except ImportError:
        sys.exit("gloo_allreduce.py: torch is not importable by this python; run it with /usr/bin/python3 "
                 "(Debian's python3-torch)")
    # Gloo picks the interface of the host name unless told; keep everything on loopback.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = free_port()
    mp.spawn(worker, args=(args, port, queue), nprocs=args.ranks, join=True)
    wrong = 0
    for _ in range(args.ranks):
        wrong += queue.get()
    sys.exit(0 if wrong == 0 else 1)


if __name__ == "__main__":
    main()
