#!/usr/bin/python3
"""PyTorch DistributedDataParallel peer for loom's data-parallel training benchmark: the GPT-2 of bench/torch_gpt.py
(imported from it, not copied) trained with AdamW on synthetic uniform random tokens by --ranks processes on this
machine, gradients averaged by DDP's bucketed all-reduce over gloo on loopback (127.0.0.1).

Usage:
  bench/peer_env.sh /usr/bin/python3 bench/torch_ddp.py --model gpt2-124m|gpt2-l6 --ranks 2 --threads 1 \\
      [--batch 4] [--seq-len 64] [--steps 10] [--warmup 2] [--bucket-mb 25] [--grad-as-bucket-view on|off] \\
      [--comm-timing on|off]

The program spawns its own ranks (torch.multiprocessing.spawn; MASTER_ADDR=127.0.0.1 and a free MASTER_PORT are set
by it; GLOO_SOCKET_IFNAME defaults to lo), so no torchrun is needed. --batch is the GLOBAL batch: sequences per step
over all ranks; each rank trains on --batch/--ranks of them (it must divide). --threads is per rank
(torch.set_num_threads in each). Every rank builds the model from the same seed (DDP also broadcasts rank 0's weights
at construction) and draws its own data from seed+1+rank. The recipe is torch_gpt.py's: AdamW (lr 3e-4, betas 0.9/
0.95, decay on matrices and embeddings only, per-tensor loop), global-norm clipping of the averaged gradients.

DDP configuration: --bucket-mb is DDP's bucket_cap_mb, --grad-as-bucket-view its gradient_as_bucket_view (gradients
live in the all-reduce buckets: no copy in or out, one gradient-sized buffer less). The model's only buffer, the
constant causal mask, is kept out of DDP (gloo cannot broadcast bool tensors), so there is no per-forward buffer
broadcast. The defaults (25 MB, view on) are the fastest measured here, 2 ranks x 1 thread on the 2-core machine,
global batch 4, T 64, medians of 3 steps after 1 warm-up, configurations alternated (noisy shared machine, +-10%;
single-process torch_gpt.py L6 at 2 threads ran ~440 ms then, against PERFORMANCE.md's ~285, so all were slow):
  L6:   25 MB view on ~515-565 ms, view off ~565-590, 5 MB ~535-600, 100 MB ~530-560
  124M: 25 MB view on ~2,040-2,130 ms (peak RSS 2.7 GiB), view off ~2,000-2,190 (3.0 GiB), 100 MB ~2,520-2,640
Bucket size and view matter little at 25 MB or below (with both cores busy computing, gloo's threads have no idle
core to overlap on); 100 MB buckets leave more all-reduce exposed after backward on 124M; the view saves memory.

It must run under the "tuned" environment of shared PERFORMANCE.md (bench/peer_env.sh sets it up, with OMP/OpenBLAS
thread counts = --threads, the per-rank count). Without it the program says so on stderr and reports
"tuned_env": false.

Output (rank 0 only): one JSON line per step {"step","loss","ms","tokens_per_sec"}: loss is the mean over ranks, ms
rank 0's time from forward start (all ranks leave a barrier together) to the end of optimizer.step(), tokens_per_sec
global (--batch * --seq-len per step); warm-up steps are marked "warmup": true and left out of the summary. Then
{"summary": true, "median_ms", "tokens_per_sec" (global, at the median step), "ranks", "threads", "batch",
"seq_len", "bucket_mb", "grad_as_bucket_view", "peak_rss_bytes" (rank 0's process), "comm_wait_ms", "comm_span_ms",
"tuned_env", ...}.
  comm_wait_ms (median over measured steps, rank 0): the communication DDP did not hide behind backward, measured as
  the time from the last gradient bucket being handed to all-reduce (the end of backward's compute) to backward()
  returning (DDP's finalize waits there for every bucket's all-reduce and writes the averaged gradients back).
  comm_span_ms: from the first bucket's all-reduce launch to the last one's completion (overlapped with backward
  compute, so not a cost by itself). Both come from a comm hook identical to DDP's default averaging all-reduce
  (torch's allreduce_hook) plus timestamps; --comm-timing off uses DDP's built-in C++ path instead and leaves them
  out (no difference measurable on L6 over 3 alternated pairs: a few Python calls per bucket).
"""
import argparse
import json
import os
import resource
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_gpt  # noqa: E402  (the model, model table and tuned-environment check)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402


class CommTimer:
    """DDP comm hook = torch's default allreduce_hook (divide by world size, async all_reduce) with timestamps."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.first_launch = None
        self.last_launch = None
        self.last_done = None

    def hook(self, process_group, bucket):
        t = time.perf_counter()
        if self.first_launch is None:
            self.first_launch = t
        self.last_launch = t
        group = process_group if process_group is not None else dist.group.WORLD
        tensor = bucket.buffer()
        tensor.div_(group.size())
        fut = dist.all_reduce(tensor, group=group, async_op=True).get_future()

        def done(f):
            self.last_done = time.perf_counter()
            return f.value()[0]

        return fut.then(done)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, a, env_ok):
    world = a.ranks
    torch.set_num_threads(a.threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(a.seed)
    model = torch_gpt.GPT(**torch_gpt.MODELS[a.model])
    model.train()
    n_params = sum(p.numel() for p in model.parameters())  # tied head counted once
    # the only buffer, the causal mask, is a constant built identically on every rank; gloo cannot broadcast bool
    # tensors ("Invalid scalar type"), so DDP is told to leave it alone (nothing is left to broadcast per forward)
    DDP._set_params_and_buffers_to_ignore_for_model(model, ["mask"])
    ddp = DDP(model, bucket_cap_mb=a.bucket_mb, gradient_as_bucket_view=(a.grad_as_bucket_view == "on"),
              broadcast_buffers=False)
    timer = None
    if a.comm_timing == "on":
        timer = CommTimer()
        ddp.register_comm_hook(None, timer.hook)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.95), eps=1e-8,
                            foreach=(a.foreach == "on"))
    gen = torch.Generator().manual_seed(a.seed + 1 + rank)
    B, T = a.batch // world, a.seq_len  # per-rank batch
    V = torch_gpt.VOCAB

    times, waits, spans = [], [], []
    for step in range(a.warmup + a.steps):
        data = torch.randint(0, V, (B, T + 1), generator=gen)
        x, y = data[:, :-1], data[:, 1:]
        dist.barrier()
        if timer:
            timer.reset()
        t0 = time.perf_counter()
        loss = ddp(x, y)
        loss.backward()
        t_bwd = time.perf_counter()
        if a.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        lossv = loss.item()
        ms = (time.perf_counter() - t0) * 1e3
        lt = torch.tensor([lossv], dtype=torch.float64)  # mean loss over ranks, outside the timed region
        dist.all_reduce(lt)
        lossv = lt.item() / world
        rec = {"step": step, "loss": round(lossv, 6), "ms": round(ms, 3),
               "tokens_per_sec": round(a.batch * T / ms * 1e3, 2)}
        if timer and timer.last_launch is not None:
            rec["comm_wait_ms"] = round((t_bwd - timer.last_launch) * 1e3, 3)
            rec["comm_span_ms"] = round((timer.last_done - timer.first_launch) * 1e3, 3)
        if step < a.warmup:
            rec["warmup"] = True
        else:
            times.append(ms)
            if "comm_wait_ms" in rec:
                waits.append(rec["comm_wait_ms"])
                spans.append(rec["comm_span_ms"])
        if rank == 0:
            print(json.dumps(rec), flush=True)

    if rank == 0:
        med = statistics.median(times)
        summ = {
            "summary": True, "system": "pytorch-ddp", "torch": torch.__version__, "backend": "gloo",
            "model": a.model, "params": n_params, "precision": "fp32", "ranks": world, "threads": a.threads,
            "batch": a.batch, "batch_per_rank": B, "seq_len": T, "steps": a.steps, "warmup": a.warmup,
            "bucket_mb": a.bucket_mb, "grad_as_bucket_view": a.grad_as_bucket_view == "on",
            "attention": "sdpa" if torch_gpt.HAS_SDPA else "manual", "adamw_foreach": a.foreach == "on",
            "median_ms": round(med, 3), "mean_ms": round(statistics.mean(times), 3), "min_ms": round(min(times), 3),
            "tokens_per_sec": round(a.batch * T / med * 1e3, 2),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }
        if waits:
            summ["comm_wait_ms"] = round(statistics.median(waits), 3)
            summ["comm_span_ms"] = round(statistics.median(spans), 3)
        summ["tuned_env"] = env_ok
        print(json.dumps(summ), flush=True)
    dist.barrier()
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(torch_gpt.MODELS), default="gpt2-l6")
    ap.add_argument("--ranks", type=int, default=2, help="processes (data-parallel ranks)")
    ap.add_argument("--threads", type=int, default=1, help="threads per rank")
    ap.add_argument("--steps", type=int, default=10, help="measured steps")
    ap.add_argument("--batch", type=int, default=4, help="global batch: sequences per step over all ranks")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=2, help="steps run first and left out of the summary")
    ap.add_argument("--bucket-mb", type=float, default=25.0, help="DDP bucket_cap_mb")
    ap.add_argument("--grad-as-bucket-view", choices=["on", "off"], default="on",
                    help="DDP gradient_as_bucket_view")
    ap.add_argument("--comm-timing", choices=["on", "off"], default="on",
                    help="time all-reduce with a comm hook equal to DDP's default (comm_wait_ms, comm_span_ms)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clip (0 = off)")
    ap.add_argument("--foreach", choices=["on", "off"], default="off", help="AdamW's multi-tensor implementation")
    ap.add_argument("--seed", type=int, default=1337)
    a = ap.parse_args()
    if (a.steps < 1 or a.warmup < 0 or a.ranks < 1 or a.batch < a.ranks or a.batch % a.ranks
            or not 1 <= a.seq_len <= torch_gpt.MAX_SEQ or a.threads < 1 or a.bucket_mb <= 0):
        ap.error("bad arguments (--batch must be a positive multiple of --ranks)")

    probs = torch_gpt.tuned_env_problems(a.threads)
    for p in probs:
        print("torch_ddp.py: warning: not the tuned environment: %s (run under bench/peer_env.sh)" % p,
              file=sys.stderr)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(free_port())
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(worker, args=(a, not probs), nprocs=a.ranks, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
