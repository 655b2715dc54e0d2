"""The PyTorch peer of chorus's GPT (src/chorus/train/gpt.h) for the model-parallel benchmark:
the same byte-level decoder-only transformer, data, windows, optimizer and schedule, trained in
one process with eager PyTorch on the CPU.

  model     GPT-2 style, pre-LayerNorm: x = wte(ids) + wpe(positions), dropout; per layer
            x += dropout(proj(causal_attention(ln1(x)))), x += dropout(fc2(gelu(fc1(ln2(x)))));
            lnf; logits = lnf(x) @ wte^T (tied; --untied: a separate lm_head without bias).
            Vocabulary 256 (bytes), qkv one Linear(E, 3E) (rows q, k, v), MLP width 4E, GELU
            exact (erf), LayerNorm eps 1e-5, attention softmax(q k^T / sqrt(E/H)) with the
            causal mask and dropout on the probabilities.
  init      every Linear and Embedding weight normal(0, 0.02); attn.proj and mlp.fc2 weights
            normal(0, 0.02 / sqrt(2 * layers)); biases 0; LayerNorm weight 1, bias 0. Drawn
            from torch's generator seeded with --seed (chorus seeds each parameter by its own
            name, so the two start from the same distributions, not the same numbers).
  data      the text corpus rule of src/chorus/train/text.h, reimplemented: the regular files
            of --data (not symbolic links, not names starting with '.' or ending in ".dat")
            sorted by name; the file at sorted index i is validation when i % 10 == 1, else
            training; each split is its files' bytes concatenated in that order.
  windows   step s (0-based) draws the global batch from a torch.Generator seeded with
            window_seed(seed, s) (splitmix64, below): starts = randint(0, N - T, (B,)) over
            the training bytes, ids = bytes[start : start + T], targets = bytes[start + 1 :
            start + T + 1]. Validation: --eval-windows windows whose starts are spread evenly,
            start_i = i * (N - T - 1) // (count - 1). These are the windows chorus draws at
            any data-parallel size (each dp rank takes its slice of the same global batch).
  optimizer AdamW(lr, betas, eps, weight_decay) on every parameter; lr per step: linear warmup
            from lr * warmup_start over --warmup steps, then cosine to --min-lr at --steps
            (chorus's LrSchedule, schedule.name = "cosine"), or constant.
  threads   torch.set_num_threads(--threads), set_num_interop_threads(1).

Measured: tokens/s = steps * batch * context / the wall time of the training steps alone
(time.perf_counter before the first and after the last step; data windows are drawn inside,
as chorus does; no evaluation inside). After training: the mean cross-entropy (nats) over
every position of the validation windows and bits per byte = loss / ln 2. One JSON line at
the end on stdout (and in --json-out):

  {"impl":"torch-gpt","layers":4,...,"tokens_per_s":...,"steps_per_s":...,"train_s":...,
   "val_loss":...,"val_bpb":...,"train_loss_last":...,"params":...,"peak_rss_mb":...}

usage: /usr/bin/python3 bench/model-parallel/gpt_torch.py [--layers 4] [--heads 4] [--embed 128]
       [--context 128] [--batch 32] [--steps 300] [--lr 3e-3] [--threads 1] [--seed 0]
       [--eval-windows 256] [--data /usr/share/games/fortunes] [--json-out PATH] [--sample N]
Standard library and python3-torch only.
"""

import argparse
import json
import math
import os
import resource
import sys
import time

MASK64 = (1 << 64) - 1
VOCAB = 256
DEFAULT_DATA = "/usr/share/games/fortunes"


def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def window_seed(seed, step):
    """The seed of step `step`'s window generator: text.h's windowSeed."""
    return splitmix64(splitmix64(seed & MASK64) ^ (step & MASK64))


def corpus_files(folder):
    """(train names, validation names), each sorted: text.h's split rule."""
    try:
        entries = os.listdir(folder)
    except OSError as e:
        raise SystemExit(f"cannot read the text corpus folder {folder}: {e.strerror}; install the Debian "
                         f"package fortunes (apt install fortunes) or pass --data DIR")
    names = sorted(n for n in entries
                   if not n.startswith(".") and not n.endswith(".dat")
                   and not os.path.islink(os.path.join(folder, n)) and os.path.isfile(os.path.join(folder, n)))
    if len(names) < 2:
        raise SystemExit(f"{folder} holds {len(names)} text files, need at least 2 (one for validation); install "
                         f"the Debian package fortunes (apt install fortunes) or pass --data DIR")
    return [n for i, n in enumerate(names) if i % 10 != 1], [n for i, n in enumerate(names) if i % 10 == 1]


def load_bytes(folder, names):
    import torch

    data = bytearray()
    for n in names:
        with open(os.path.join(folder, n), "rb") as f:
            data += f.read()
    return torch.frombuffer(data, dtype=torch.uint8).clone()


def windows(data, starts, context):
    """(ids [B, T], targets [B, T]) int64 from the window starts [B]."""
    import torch

    idx = starts.unsqueeze(1) + torch.arange(context + 1, dtype=torch.int64).unsqueeze(0)
    w = data.index_select(0, idx.reshape(-1)).reshape(idx.shape).to(torch.int64)
    return w[:, :context], w[:, 1:]


def step_windows(data, batch, context, seed, step):
    import torch

    g = torch.Generator()
    g.manual_seed(window_seed(seed, step))
    starts = torch.randint(0, data.numel() - context, (batch,), generator=g, dtype=torch.int64)
    return windows(data, starts, context)


def eval_starts(n, context, count):
    import torch

    last = n - context - 1
    if count == 1:
        return torch.zeros(1, dtype=torch.int64)
    return torch.tensor([i * last // (count - 1) for i in range(count)], dtype=torch.int64)


def build_model(args):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    E, H, T = args.embed, args.heads, args.context

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(E, 3 * E)
            self.proj = nn.Linear(E, E)
            self.register_buffer("causal", torch.ones(T, T, dtype=torch.bool).tril(), persistent=False)

        def forward(self, x):  # x [B, T, E]
            B, t, _ = x.shape
            q, k, v = self.qkv(x).split(E, dim=2)
            # [B, H, T, D]
            q, k, v = (z.view(B, t, H, E // H).transpose(1, 2) for z in (q, k, v))
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(E // H))
            att = att.masked_fill(~self.causal[:t, :t], float("-inf"))
            att = F.dropout(att.softmax(dim=-1), args.dropout, self.training)
            y = (att @ v).transpose(1, 2).reshape(B, t, E)
            return self.proj(y)

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(E, 4 * E)
            self.fc2 = nn.Linear(4 * E, E)

        def forward(self, x):
            return self.fc2(F.gelu(self.fc1(x)))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1 = nn.LayerNorm(E, eps=1e-5)
            self.attn = Attention()
            self.ln2 = nn.LayerNorm(E, eps=1e-5)
            self.mlp = Mlp()

        def forward(self, x):
            x = x + F.dropout(self.attn(self.ln1(x)), args.dropout, self.training)
            return x + F.dropout(self.mlp(self.ln2(x)), args.dropout, self.training)

    class Gpt(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(VOCAB, E)
            self.wpe = nn.Embedding(T, E)
            self.h = nn.ModuleList(Block() for _ in range(args.layers))
            self.lnf = nn.LayerNorm(E, eps=1e-5)
            self.lm_head = nn.Linear(E, VOCAB, bias=False) if args.untied else None
            residual_std = 0.02 / math.sqrt(2 * args.layers)
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                elif ".ln" in name or name.startswith("lnf."):
                    nn.init.ones_(p)
                elif name.endswith("attn.proj.weight") or name.endswith("mlp.fc2.weight"):
                    nn.init.normal_(p, 0.0, residual_std)
                else:
                    nn.init.normal_(p, 0.0, 0.02)

        def forward(self, ids):  # ids [B, T] -> logits [B, T, V]
            t = ids.shape[1]
            pos = torch.arange(t, dtype=torch.int64)
            x = F.dropout(self.wte(ids) + self.wpe(pos).unsqueeze(0), args.dropout, self.training)
            for block in self.h:
                x = block(x)
            x = self.lnf(x)
            return self.lm_head(x) if self.lm_head is not None else x @ self.wte.weight.t()

    return Gpt()


def lr_at(args, step):
    if step < args.warmup:
        return args.lr * (args.warmup_start + (1.0 - args.warmup_start) * step / args.warmup)
    if args.schedule == "constant":
        return args.lr
    span = args.steps - args.warmup
    t = min(1.0, (step - args.warmup) / span) if span > 0 else 1.0
    return args.min_lr + (args.lr - args.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def sample(model, prompt, tokens, context, seed):
    """`tokens` bytes continuing `prompt`, drawn from the softmax (temperature 1)."""
    import torch

    g = torch.Generator()
    g.manual_seed(seed)
    ids = list(prompt.encode())
    model.eval()
    with torch.no_grad():
        for _ in range(tokens):
            x = torch.tensor([ids[-context:]], dtype=torch.int64)
            probs = model(x)[0, -1].softmax(-1)
            ids.append(int(torch.multinomial(probs, 1, generator=g)))
    return bytes(ids).decode("utf-8", errors="replace")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--embed", type=int, default=128)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--batch", type=int, default=32, help="windows per step")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--min-lr", type=float, default=0.0, help="cosine: the lr at the last step")
    p.add_argument("--warmup", type=int, default=0, help="steps of linear warmup")
    p.add_argument("--warmup-start", type=float, default=0.1, help="fraction of lr at the first warmup step")
    p.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.999)
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--untied", action="store_true", help="a separate lm_head instead of wte^T")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-windows", type=int, default=256)
    p.add_argument("--eval-batch", type=int, default=64, help="validation windows per forward")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--json-out", default="")
    p.add_argument("--sample", type=int, default=0, help="print this many sampled bytes to stderr at the end")
    p.add_argument("--prompt", default="The ")
    args = p.parse_args()
    for name in ("layers", "heads", "embed", "context", "batch", "steps", "threads", "eval_windows", "eval_batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.embed % args.heads:
        p.error(f"--embed {args.embed} is not a multiple of --heads {args.heads}")
    if not 0 <= args.dropout < 1:
        p.error("--dropout must be in [0, 1)")

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    train_names, val_names = corpus_files(args.data)
    train = load_bytes(args.data, train_names)
    val = load_bytes(args.data, val_names)
    for what, d in (("training", train), ("validation", val)):
        if d.numel() < args.context + 1:
            raise SystemExit(f"the {what} split of {args.data} has {d.numel()} bytes, fewer than --context + 1")

    torch.manual_seed(args.seed)
    model = build_model(args)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps,
                            weight_decay=args.weight_decay)

    model.train()
    loss_value = float("nan")
    t0 = time.perf_counter()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(args, step)
        ids, targets = step_windows(train, args.batch, args.context, args.seed, step)
        logits = model(ids)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step == args.steps - 1:
            loss_value = loss.item()
    train_s = time.perf_counter() - t0

    model.eval()
    starts = eval_starts(val.numel(), args.context, args.eval_windows)
    total = 0.0
    with torch.no_grad():
        for chunk in starts.split(args.eval_batch):
            ids, targets = windows(val, chunk, args.context)
            logits = model(ids)
            total += F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), reduction="sum").item()
    val_loss = total / (starts.numel() * args.context)

    result = {
        "impl": "torch-gpt", "layers": args.layers, "heads": args.heads, "embed": args.embed,
        "context": args.context, "batch": args.batch, "steps": args.steps, "lr": args.lr,
        "threads": args.threads, "seed": args.seed, "params": params,
        "train_bytes": train.numel(), "val_bytes": val.numel(), "eval_windows": starts.numel(),
        "tokens_per_s": args.steps * args.batch * args.context / train_s,
        "steps_per_s": args.steps / train_s, "train_s": train_s,
        "train_loss_last": loss_value, "val_loss": val_loss, "val_bpb": val_loss / math.log(2),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    if args.sample > 0:
        print(sample(model, args.prompt, args.sample, args.context, args.seed), file=sys.stderr)
    line = json.dumps(result)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(line + "\n")
    print(line, flush=True)


if __name__ == "__main__":
    main()
