#!/usr/bin/env python3
"""Serving under load: `loom serve` with N concurrent streaming clients against llama.cpp decoding N sequences at
once in one context (loom's own GGUF export, the same model, prompts, token counts and threads), medians over rounds.

    /usr/bin/python3 bench/bench_serve.py [--loom build/loom] [--ckpt DIR | --preset gpt2-124m] [--clients 1,4,16,64]
        [--requests-per-client 2] [--max-tokens 32] [--prompt-tokens 64] [--threads 2] [--precision fp32]
        [--rounds 3] [--check-prompts 16] [--peer-threads N] [--no-peer] [--peak-gflops G]
        [--server-arg=--kv-memory=1G ...]

Without --ckpt the model is the preset with loom's initial weights at init_std 0.1 (one training step on synthetic
data, as bench/bench_generate.py makes it: speed does not depend on the values; the wider weights give the
logits clear margins, so fp32 greedy texts compare across batch sizes; bf16 ones may part where a
summation-order difference flips a bf16 rounding). Each client sends its requests one after
another (POST /v1/completions, stream: true, stream_options.include_usage, temperature 0), each with a prompt of its
own (about --prompt-tokens tokens, no two alike from the first token: no shared prefix to cache), all N clients
at once. Per N: aggregate output tokens/s (all completion tokens / the wall time from the first request sent to the
last token received), time to first token (request sent -> first streamed text) and inter-token latency (gaps
between streamed events), p50/p99 over all requests; failures (non-200, broken streams); and whether each greedy
text equals the solo one (the same prompt sent alone, before any phase: --check-prompts of them; past those, the
same prompt's text in another phase). The server's RSS (VmRSS, and VmHWM, its peak) before and after each phase.

The peer, node-llama-cpp 3.21.1 (scripts/setup.sh --test), runs bench/serve_llama_cpp.mjs: one LlamaContext with
`sequences: N`, each sequence evaluating its client's prompts in turn, all N concurrently (Promise.all: their tokens
share batches), greedy, max_tokens each, the same threads (--peer-threads to change: node-llama-cpp's own
JavaScript thread also needs a core, so on a 2-core machine llama.cpp with 2 threads is oversubscribed and
its per-token overhead dominates small models); loom serve stays up, idle (its CPU time meanwhile is printed).
Prints figures and the ratios loom/llama.cpp per N and loom(N=16)/loom(N=1), beside the compute ceiling of the
latter (each request's FLOPs, from the checkpoint's shapes, at `loom bench peak`'s measured GEMM peak or
--peak-gflops: what N=16 would give with every FLOP at the peak and nothing else); asserts nothing, but a greedy text
that differs from its solo one is printed and the exit status is 1. Run it on a quiet machine.
"""
import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORDS = ("the quick brown fox jumps over the lazy dog while seven wise owls watch from an old oak tree near "
         "a quiet river and count the stars").split()


def pct(xs, q):
    """q-th percentile (nearest rank on the sorted list); nan when empty."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))]


def med(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def model_flops(loom, ckpt):
    """(FLOPs of one row through the blocks, of one row through the vocabulary head, attention FLOPs per row
    and cached position) from the checkpoint's metadata (`loom ckpt info`): 2 per weight of each product; the
    embeddings (wte, wpe) are looked up, the head (tied or lm_head.weight) is vocabulary x d_model."""
    r = subprocess.run([loom, "ckpt", "info", ckpt], capture_output=True, text=True)
    meta = next((json.loads(l[5:]) for l in r.stdout.splitlines() if l.startswith("meta ")), None)
    if r.returncode != 0 or not meta:
        return None
    mc = meta["model"]
    body = sum(p["shape"][0] * p["shape"][1] for p in meta["params"]
               if len(p["shape"]) == 2 and p["name"] not in ("wte", "wpe", "lm_head.weight"))
    return 2.0 * body, 2.0 * mc["vocab_size"] * mc["d_model"], 4.0 * mc["n_layer"] * mc["d_model"]


def bench_peak(loom, threads, precision):
    """The fp32 or bf16 GEMM peak for `threads`, GFLOP/s: `loom bench peak`'s cache, else measured now"""
    cache = os.path.join(os.environ.get("LOOM_CACHE_DIR") or os.path.expanduser("~/.cache/loom"),
                         f"peak-{threads}threads.txt")
    text = open(cache).read() if os.path.exists(cache) else ""
    if "peak_bf16_gflops=" not in text:
        r = subprocess.run([loom, "bench", "peak", "--threads", str(threads)], capture_output=True, text=True)
        text = r.stdout + r.stderr
    m = re.search(("peak_bf16_gflops" if precision == "bf16" else "peak_gflops") + r"=([0-9.]+)", text)
    return float(m.group(1)) if m else None


def request_flops(f, prompt, gen):
    """FLOPs of one request: its prompt's rows through the blocks and one through the head, then gen - 1
    decode rows through both; attention against every cached position."""
    body, head, att = f
    rows = prompt + max(gen - 1, 0)
    return rows * body + gen * head + att * rows * (rows + 1) / 2


def make_prompt(k, n_tokens):
    """A prompt of about n_tokens GPT-2 tokens (plain words), its own from the first token."""
    words = [f"Request {k}:"] + [WORDS[(k * 7 + i) % len(WORDS)] for i in range(max(1, n_tokens - 4))]
    return " ".join(words)


def proc_status(pid):
    """{VmRSS, VmHWM} in MiB, and CPU seconds (utime + stime) of a process."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0]) / 1024
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            out["cpu"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        pass
    return out


class Server:
    def __init__(self, cmd):
        self.cmd, self.log = cmd, []
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.ready = threading.Event()
        self.host = self.port = self.model = None
        for s in (self.proc.stdout, self.proc.stderr):
            threading.Thread(target=self._read, args=(s,), daemon=True).start()

    def _read(self, stream):
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            self.log.append(line)
            m = re.match(r"loom serve: listening on http://([^ ]+):(\d+) \(model (.*)\)$", line)
            if m:
                self.host, self.port, self.model = m.group(1), int(m.group(2)), m.group(3)
                self.ready.set()

    def wait(self, timeout=600):
        t0 = time.time()
        while time.time() - t0 < timeout and self.proc.poll() is None:
            if self.ready.wait(0.2):
                return True
        return self.ready.is_set()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def stream_request(srv, prompt, max_tokens, timeout=3600):
    """One streamed greedy completion: {ok, text, tokens, t_send, t_first, event_times, error}."""
    body = json.dumps({"model": srv.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True, "stream_options": {"include_usage": True}})
    res = {"ok": False, "text": "", "tokens": 0, "event_times": [], "t_first": None, "error": None}
    c = http.client.HTTPConnection(srv.host, srv.port, timeout=timeout)
    try:
        res["t_send"] = time.perf_counter()
        c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json",
                                                                 "Authorization": "Bearer bench"})
        r = c.getresponse()
        if r.status != 200:
            res["error"] = f"HTTP {r.status}: {r.read()[:200]!r}"
            return res
        buf, done, parts = b"", False, []
        while not done:
            chunk = r.read1(65536)
            if not chunk:
                break
            buf += chunk
            while b"\n\n" in buf:
                ev, buf = buf.split(b"\n\n", 1)
                now = time.perf_counter()
                data = ev[6:] if ev.startswith(b"data: ") else None
                if data is None:
                    continue
                if data == b"[DONE]":
                    done = True
                    break
                j = json.loads(data)
                if j.get("choices"):
                    t = j["choices"][0].get("text", "")
                    parts.append(t)
                    if t:
                        res["event_times"].append(now)
                        if res["t_first"] is None:
                            res["t_first"] = now
                if j.get("usage"):
                    res["tokens"] = j["usage"].get("completion_tokens", 0)
                    res["prompt_tokens"] = j["usage"].get("prompt_tokens", 0)
        res["t_end"] = time.perf_counter()
        res["text"] = "".join(parts)
        res["ok"] = done
        if not done:
            res["error"] = "stream ended without [DONE]"
    except (OSError, http.client.HTTPException, ValueError) as e:
        res["error"] = repr(e)
    finally:
        c.close()
    return res


def loom_phase(srv, n, prompts_of):
    """n clients at once, client i sending prompts_of[i] in turn. Returns a summary dict and {k: text}."""
    results = [[] for _ in range(n)]
    barrier = threading.Barrier(n)

    def client(i):
        barrier.wait()
        for k, p in prompts_of[i]:
            r = stream_request(srv, p, ARGS.max_tokens)
            r["k"] = k
            results[i].append(r)

    before = proc_status(srv.proc.pid)
    th = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    after = proc_status(srv.proc.pid)
    flat = [r for rs in results for r in rs]
    good = [r for r in flat if r["ok"]]
    t_start = min(r["t_send"] for r in flat if "t_send" in r)
    t_end = max((r.get("t_end", 0) for r in flat), default=t_start)
    ttft = [r["t_first"] - r["t_send"] for r in good if r["t_first"] is not None]
    itl = [b - a for r in good for a, b in zip(r["event_times"], r["event_times"][1:])]
    tokens = sum(r["tokens"] for r in good)
    errors = [r["error"] for r in flat if not r["ok"]]
    shapes = [(r.get("prompt_tokens", 0), r["tokens"]) for r in good]
    return ({"tps": tokens / (t_end - t_start) if t_end > t_start else 0.0, "tokens": tokens,
             "ttft50": pct(ttft, 50), "ttft99": pct(ttft, 99), "itl50": pct(itl, 50), "itl99": pct(itl, 99),
             "fail": len(errors), "errors": errors[:3], "rss_before": before.get("VmRSS", float("nan")),
             "rss_after": after.get("VmRSS", float("nan")), "hwm": after.get("VmHWM", float("nan")),
             "shapes": shapes},
            {r["k"]: r["text"] for r in good})


def llama_phase(peer, gguf, n, prompts_of, w, srv):
    path = os.path.join(w, f"prompts-{n}.json")
    with open(path, "w") as f:
        json.dump([[p for _, p in ps] for ps in prompts_of], f)
    cpu0 = proc_status(srv.proc.pid).get("cpu", 0.0)
    t0 = time.time()
    r = subprocess.run([os.path.join(peer, "bin", "node"), os.path.join(HERE, "serve_llama_cpp.mjs"), peer, gguf,
                        str(ARGS.peer_threads or ARGS.threads), str(ARGS.max_tokens), path],
                       capture_output=True, text=True)
    wall_all = time.time() - t0
    idle_cpu = proc_status(srv.proc.pid).get("cpu", 0.0) - cpu0
    if r.returncode != 0:
        return {"tps": float("nan"), "fail": n, "errors": [r.stderr[-500:]]}, {}
    d = json.loads([l for l in r.stdout.splitlines() if l.startswith("{")][-1])
    reqs = d["requests"]
    tokens = sum(len(q["ids"]) for q in reqs)
    ttft = [(q["token_ms"][0] - q["start_ms"]) / 1e3 for q in reqs if q["token_ms"]]
    itl = [(b - a) / 1e3 for q in reqs for a, b in zip(q["token_ms"], q["token_ms"][1:])]
    texts = {prompts_of[q["seq"]][q["index"]][0]: (q["text"], len(q["ids"])) for q in reqs}
    return ({"tps": tokens / (d["wall_ms"] / 1e3), "tokens": tokens, "ttft50": pct(ttft, 50), "ttft99": pct(ttft, 99),
             "itl50": pct(itl, 50), "itl99": pct(itl, 99), "fail": 0, "server_idle_cpu": idle_cpu / wall_all},
            texts)


def main():
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loom", default=os.path.join(ROOT, "build", "loom"))
    ap.add_argument("--peer", default=os.path.join(ROOT, "build", "peers", "llama-cpp"))
    ap.add_argument("--ckpt", help="a checkpoint directory (default: the preset with its initial weights)")
    ap.add_argument("--preset", default="gpt2-124m")
    ap.add_argument("--tokenizer", help="passed to loom serve and loom export (default: the checkpoint's)")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peer-threads", type=int, help="llama.cpp's threads (default: --threads)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--gguf-dtype", choices=("f32", "f16", "bf16"), help="default: f32 for fp32, bf16 for bf16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--check-prompts", type=int, default=16, help="prompts first sent alone as the greedy reference")
    ap.add_argument("--no-peer", action="store_true", help="loom serve only")
    ap.add_argument("--peak-gflops", type=float, help="the machine's peak for the compute ceiling (default: `loom "
                    "bench peak`'s cached figure for --threads)")
    ap.add_argument("--server-arg", action="append", default=[], help="more loom serve arguments, e.g. "
                    "--server-arg=--kv-memory=2G (split at the first '=' after the option name)")
    ARGS = a = ap.parse_args()
    clients = [int(x) for x in a.clients.split(",")]
    R = a.requests_per_client
    peer_ok = not a.no_peer and os.path.exists(os.path.join(a.peer, "node_modules", "node-llama-cpp"))
    if not a.no_peer and not peer_ok:
        print(f"note: node-llama-cpp not found in {a.peer} (scripts/fetch_llama_cpp.sh {a.peer}): loom only")
    gguf_dtype = a.gguf_dtype or ("f32" if a.precision == "fp32" else "bf16")
    prompts = [make_prompt(k, a.prompt_tokens) for k in range(max(clients) * R)]
    with tempfile.TemporaryDirectory(prefix="loom_bench_serve_") as w:
        ckpt = a.ckpt
        tokenizer = a.tokenizer
        if not ckpt:
            ckpt = os.path.join(w, a.preset)
            # init_std 0.1: logits with clear margins, so a greedy text does not hinge on float rounding (a
            # batch's products sum in another order than a solo run's; bf16's prefill kernels differ by size)
            subprocess.run([a.loom, "-q", "train", "--preset", a.preset, "--data", "synthetic", "--steps", "1",
                            "--batch", "1", "--seq-len", "16", "--threads", str(a.threads), "--out", ckpt, "--set",
                            "train.progress=0", "--set", "model.init_std=0.1"], check=True, stdout=subprocess.DEVNULL)
            if tokenizer is None and a.preset.startswith("gpt2"):
                tokenizer = "gpt2"
        gguf = os.path.join(w, f"model-{gguf_dtype}.gguf")
        if peer_ok:
            subprocess.run([a.loom, "-q", "export", "--ckpt", ckpt, "--format", "gguf", "--out", gguf, "--dtype",
                            gguf_dtype] + (["--tokenizer", tokenizer] if tokenizer else []), check=True)
        extra = []
        for s in a.server_arg:
            extra += s.split("=", 1) if s.startswith("--") and "=" in s else [s]
        # no prefix cache: the solo references send the same prompts first, and the peer prefills every prompt
        cmd = [a.loom, "serve", "--ckpt", ckpt, "--port", "0", "--threads", str(a.threads), "--precision",
               a.precision, "--max-seqs", str(max(clients)), "--max-queue", str(4 * max(clients) * R),
               "--no-prefix-cache"]
        cmd += (["--tokenizer", tokenizer] if tokenizer else []) + extra
        srv = Server(cmd)
        try:
            if not srv.wait():
                sys.exit("loom serve did not start:\n" + "\n".join(srv.log[-30:]))
            st0 = proc_status(srv.proc.pid)
            flops = model_flops(a.loom, ckpt)
            peak = a.peak_gflops or bench_peak(a.loom, a.threads, a.precision)
            print(f"{os.path.basename(ckpt)} ({a.precision}; llama.cpp {gguf_dtype if peer_ok else '-'}), prompts of "
                  f"~{a.prompt_tokens} tokens, {a.max_tokens} new tokens, {R} requests per client, {a.threads} "
                  f"threads, {a.rounds} rounds; loom serve RSS at start {st0.get('VmRSS', 0):.0f} MiB", flush=True)
            # the solo references (one request at a time), which also warm the server up
            ref = {}
            for k in range(min(a.check_prompts, len(prompts))):
                r = stream_request(srv, prompts[k], a.max_tokens)
                if r["ok"]:
                    ref[k] = r["text"]
                else:
                    print(f"  reference request {k} failed: {r['error']}")
            seen = dict(ref)
            loom_res = {n: [] for n in clients}
            llama_res = {n: [] for n in clients}
            mismatch = {n: 0 for n in clients}
            llama_agree = [0, 0]
            for rnd in range(a.rounds):
                for n in clients:
                    prompts_of = [[(i * R + r, prompts[i * R + r]) for r in range(R)] for i in range(n)]
                    s, texts = loom_phase(srv, n, prompts_of)
                    for k, t in texts.items():
                        if k in seen and seen[k] != t:
                            mismatch[n] += 1
                            if mismatch[n] <= 2:
                                print(f"  N={n}: prompt {k}'s greedy text differs from its solo one:\n    now  "
                                      f"{t!r}\n    solo {seen[k]!r}")
                        seen.setdefault(k, t)
                    loom_res[n].append(s)
                    print(f"  round {rnd + 1} N={n:<3d} loom      {s['tps']:8.1f} tok/s  TTFT p50 {s['ttft50'] * 1e3:7.0f}"
                          f" ms  ITL p50 {s['itl50'] * 1e3:6.1f} ms  failures {s['fail']}  RSS {s['rss_before']:.0f}->"
                          f"{s['rss_after']:.0f} MiB" + (f"  errors {s['errors']}" if s["errors"] else ""), flush=True)
                    if peer_ok:
                        s, texts = llama_phase(a.peer, gguf, n, prompts_of, w, srv)
                        llama_res[n].append(s)
                        if rnd == 0:  # llama.cpp's greedy text against loom's solo one (information)
                            for k, (t, nt) in texts.items():
                                if k in ref:
                                    llama_agree[1] += 1
                                    llama_agree[0] += t[:len(ref[k])] == ref[k]
                        print(f"  round {rnd + 1} N={n:<3d} llama.cpp {s['tps']:8.1f} tok/s  TTFT p50 "
                              f"{s.get('ttft50', float('nan')) * 1e3:7.0f} ms  ITL p50 "
                              f"{s.get('itl50', float('nan')) * 1e3:6.1f} ms  (loom serve idle: "
                              f"{100 * s.get('server_idle_cpu', 0):.1f}% of a core)"
                              + (f"  errors {s['errors']}" if s.get("errors") else ""), flush=True)
            st1 = proc_status(srv.proc.pid)
        finally:
            srv.stop()
    print(f"\n{'N':>3s} | {'loom tok/s':>10s} {'TTFT p50':>9s} {'p99':>7s} {'ITL p50':>8s} {'p99':>7s} {'fail':>4s} "
          f"{'greedy':>8s} | {'llama.cpp tok/s':>15s} {'TTFT p50':>9s} {'ITL p50':>8s} | {'loom/llama.cpp':>14s}"
          "   (medians; times in ms)")
    tps = {}
    for n in clients:
        L = loom_res[n]
        tps[n] = med([x["tps"] for x in L])
        row = (f"{n:3d} | {tps[n]:10.1f} {med([x['ttft50'] for x in L]) * 1e3:9.0f} "
               f"{med([x['ttft99'] for x in L]) * 1e3:7.0f} {med([x['itl50'] for x in L]) * 1e3:8.1f} "
               f"{med([x['itl99'] for x in L]) * 1e3:7.1f} {sum(x['fail'] for x in L):4d} "
               f"{'same' if not mismatch[n] else str(mismatch[n]) + ' diff':>8s} | ")
        if llama_res[n]:
            P = llama_res[n]
            ptps = med([x["tps"] for x in P])
            row += (f"{ptps:15.1f} {med([x.get('ttft50', float('nan')) for x in P]) * 1e3:9.0f} "
                    f"{med([x.get('itl50', float('nan')) for x in P]) * 1e3:8.1f} | {tps[n] / ptps:13.2f}x")
        else:
            row += f"{'-':>15s} {'-':>9s} {'-':>8s} | {'-':>14s}"
        print(row)
    if 1 in tps and 16 in tps and tps[1] > 0:
        print(f"loom serve N=16 / N=1 aggregate tokens/s: {tps[16] / tps[1]:.2f}x")
        # the most N=16 could give: every request's FLOPs at the machine's measured peak, nothing else
        shapes = [s for x in loom_res[16] for s in x["shapes"]]
        if flops and peak and shapes:
            per_req = statistics.mean(request_flops(flops, p, g) for p, g in shapes)
            gen = statistics.mean(g for _, g in shapes)
            ceil_tps = gen / (per_req / (peak * 1e9))
            print(f"  compute ceiling: {per_req / 1e9:.1f} GFLOP per request ({statistics.mean(p for p, _ in shapes):.0f}"
                  f" prompt + {gen:.0f} generated tokens) at the measured {a.precision} peak {peak:.1f} GFLOP/s "
                  f"(loom bench peak): {ceil_tps:.0f} tok/s, {ceil_tps / tps[1]:.2f}x N=1; N=16 ran at "
                  f"{tps[16] * per_req / gen / 1e9:.1f} GFLOP/s ({100 * tps[16] / ceil_tps:.0f}% of the ceiling)")
    print(f"loom serve RSS: {st0.get('VmRSS', 0):.0f} MiB at start, {st1.get('VmRSS', 0):.0f} MiB at the end, "
          f"peak {st1.get('VmHWM', 0):.0f} MiB")
    if llama_agree[1]:
        print(f"llama.cpp's greedy text equals loom's solo one on {llama_agree[0]}/{llama_agree[1]} checked prompts "
              "(information: f32 agrees to rounding; bf16/f16 may not)")
    bad = sum(mismatch.values())
    if bad:
        print(f"greedy texts that differed from their solo ones: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
