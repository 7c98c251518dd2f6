#!/usr/bin/env python3
"""LoRA fine-tuning end to end, through the CLI: a real adaptation and what a run must keep.

Usage: test_lora_cli.py LOOM TEST_LORA_MERGE WORKDIR

1. Pretraining: a small byte-level GPT-2 (the demo preset) trained with loom on a generated corpus of plain
   sentences (no chat format in it).
2. Instruction data: a JSONL file the test writes (a fixed question-answer task: "What color is the X?" ->
   "It is C.", C fixed per X), chat messages and prompt/completion lines mixed, prepared with
   `loom data prepare --format jsonl --chat-template plain`; a malformed line stops the preparation with an
   error naming FILE:LINE and leaves no dataset behind.
3. LoRA (r 8, every target) from the pretrained weights (--init): the masked validation loss (the answers'
   tokens only) falls to under half its first value, and greedy generation answers a held-out question in the
   task's format, from the LoRA checkpoint itself and from its merge (`loom merge`), alike; the merged model's
   logits equal the adapters' (tests/test_lora_merge.c, fp32, 1e-5).
4. The run keeps what runs must: a resumed LoRA run ends on the same adapters bit for bit; two data-parallel
   ranks with ZeRO-2 follow the one-process losses; the bf16-held base trains; a wrong base or spec on resume
   and impossible combinations are refused with clear errors.
"""
import http.client
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loom_files  # noqa: E402

LOOM, MERGE_TEST, WORK = sys.argv[1], sys.argv[2], os.path.abspath(sys.argv[3])
OBJECTS = ["apple", "banana", "sky", "grass", "snow", "coal", "cherry", "lemon", "plum", "ocean", "leaf", "rose",
           "pumpkin", "violet", "carrot", "cloud", "lime", "tomato", "ink", "sand", "brick", "frog", "crow", "milk"]
COLORS = ["red", "yellow", "blue", "green", "white", "black", "purple", "orange", "brown", "gray"]
COLOR_OF = {o: COLORS[(i * 7) % len(COLORS)] for i, o in enumerate(OBJECTS)}
HELD_OUT = ("plum", "ocean")  # asked in the test, never in a training question of that wording
failures = []


def run(args, ok=True, env=None, **kw):
    p = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, **(env or {})), **kw)
    if ok and p.returncode != 0:
        print(p.stdout[-3000:], p.stderr[-3000:])
        raise SystemExit("FAIL: %s exited %d" % (" ".join(args[:4]), p.returncode))
    return p


def check(cond, what):
    print(("PASS " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def metrics(path):
    return [json.loads(l) for l in open(path) if l.strip()]


def train(out, *args, ok=True, mpi=0):
    cmd = ([shutil.which("mpirun"), "--oversubscribe", "--bind-to", "none", "-np", str(mpi)] if mpi else []) + [
        LOOM, "-q", "train", "--out", out, "--threads", "1" if mpi else "2", "--batch", "8", "--seq-len", "64",
        "--set", "train.eval_batches=4"] + list(args)
    env = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    return run(cmd, ok=ok, env=env)


def safetensors_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def drop_tensors(src, part, dst):
    """a safetensors file without the tensors whose names contain `part`"""
    buf = open(src, "rb").read()
    n = struct.unpack("<Q", buf[:8])[0]
    hdr, data = json.loads(buf[8:8 + n]), buf[8 + n:]
    out_hdr, out_data = {}, b""
    for k, v in hdr.items():
        if k == "__metadata__" or part in k:
            continue
        b = data[v["data_offsets"][0]:v["data_offsets"][1]]
        out_hdr[k] = dict(v, data_offsets=[len(out_data), len(out_data) + len(b)])
        out_data += b
    h = json.dumps(out_hdr).encode()
    h += b" " * (-len(h) % 8)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    open(dst, "wb").write(struct.pack("<Q", len(h)) + h + out_data)


def peft_table(family, L, C, F, q, kv, r):
    """PEFT's key names and shapes for LoRA on every linear of a block, written from PEFT's documentation
    (LoraModel: lora_A is nn.Linear(in_features, r), lora_B nn.Linear(r, out_features); saved as
    base_model.model.<module>.lora_{A,B}.weight, the adapter name left out)."""
    if family == "gpt2":
        mods = {"attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C), "mlp.c_fc": (C, F), "mlp.c_proj": (F, C)}
        prefix = "base_model.model.transformer.h.%d."
    else:
        mods = {"self_attn.q_proj": (C, q), "self_attn.k_proj": (C, kv), "self_attn.v_proj": (C, kv),
                "self_attn.o_proj": (q, C), "mlp.gate_proj": (C, F), "mlp.up_proj": (C, F), "mlp.down_proj": (F, C)}
        prefix = "base_model.model.model.layers.%d."
    out = {}
    for l in range(L):
        for m, (fin, fout) in mods.items():
            out[prefix % l + m + ".lora_A.weight"] = [r, fin]
            out[prefix % l + m + ".lora_B.weight"] = [fout, r]
    return out


def peft_round_trip(lora):
    """export --format peft: PEFT's names and shapes; import --format peft: the adapters back bit for bit"""
    for fam, ck, r, L, C, F, q, kv in (("gpt2", "ft", 8, 4, 128, 512, 128, 128),
                                       ("llama", "llft", 4, 2, 64, 96, 64, 32)):
        if fam == "llama":  # a small LLaMA, and a LoRA run of a few steps over it
            shape = ["--preset", "llama-tiny", "--data", "synthetic", "--set", "model.n_layer=2", "--set", "model.d_model=64",
                     "--set", "model.n_head=4", "--set", "model.n_kv_head=2", "--set", "model.d_ff=96",
                     "--set", "model.vocab_size=300"]
            train("llbase", *shape, "--steps", "2")
            train(ck, *shape, "--steps", "3", "--init", "llbase", "--lora", "r=4,alpha=8,targets=all")
        run([LOOM, "-q", "export", "--format", "peft", "--ckpt", ck, "--out", ck + "-peft"])
        cfg = json.load(open(ck + "-peft/adapter_config.json"))
        want = {"gpt2": {"c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"},
                "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}}[fam]
        check(cfg["peft_type"] == "LORA" and cfg["r"] == r and set(cfg["target_modules"]) == want and
              cfg["fan_in_fan_out"] == (fam == "gpt2"), "%s adapter_config.json: r %d, targets %s" % (fam, cfg["r"], sorted(cfg["target_modules"])))
        hdr = {k: v["shape"] for k, v in safetensors_header(ck + "-peft/adapter_model.safetensors").items() if k != "__metadata__"}
        table = peft_table(fam, L, C, F, q, kv, r)
        check(hdr == table, "%s adapter_model.safetensors: %d tensors, PEFT's names and shapes%s" % (
            fam, len(hdr), "" if hdr == table else ": %s" % sorted(set(hdr) ^ set(table))[:4]))
        base = os.path.abspath("base" if fam == "gpt2" else "llbase")
        run([LOOM, "-q", "import", "--format", "peft", ck + "-peft", "--base", base, "--out", ck + "-back"])
        a = loom_files.read_ckpt_sections(ck + "/checkpoint.bin")["params"]
        b = loom_files.read_ckpt_sections(ck + "-back/checkpoint.bin")["params"]
        check(a == b, "PEFT export then import restores the %s adapters bit for bit (%d bytes)" % (fam, len(a)))
        if fam == "llama":  # PEFT's LLaMA default adapts q_proj and v_proj only: k gets zero adapters
            drop_tensors(ck + "-peft/adapter_model.safetensors", "k_proj", "qv-peft/adapter_model.safetensors")
            shutil.copy(ck + "-peft/adapter_config.json", "qv-peft/adapter_config.json")
            run([LOOM, "-q", "import", "--format", "peft", "qv-peft", "--base", base, "--out", "qv-back"])
            meta, back = loom_files.read_ckpt_params("qv-back/checkpoint.bin")
            _, orig = loom_files.read_ckpt_params(ck + "/checkpoint.bin")
            ok = all((back[k] == 0).all() if ".attn.k." in k else (back[k] == orig[k]).all() for k in orig)
            check(ok and len(back) == len(orig), "q/v-only PEFT adapters import with zero k adapters, the rest exact")
        if fam == "gpt2":
            g1 = run([LOOM, "-q", "generate", "--ckpt", ck, "--prompt", "User: Hi\nAssistant:", "--max-tokens", "12",
                      "--temperature", "0", "--threads", "2"]).stdout
            g2 = run([LOOM, "-q", "generate", "--ckpt", ck + "-back", "--prompt", "User: Hi\nAssistant:",
                      "--max-tokens", "12", "--temperature", "0", "--threads", "2"]).stdout
            check(g1 == g2, "the imported adapters generate what the run's do")


def served_adapters():
    """two adapter sets and the base through one server, concurrently: each answer equals that model alone"""
    proc = subprocess.Popen([LOOM, "serve", "--ckpt", "base", "--port", "0", "--threads", "2", "--lora", "ft=ft",
                             "--lora", "whole=whole", "--max-seqs", "8"], stderr=subprocess.PIPE, text=True)
    port, log = None, []
    try:
        for line in proc.stderr:
            log.append(line)
            m = re.search(r"listening on http://[^:]+:(\d+) ", line)
            if m:
                port = int(m.group(1))
                break
        check(port is not None, "loom serve with two --lora adapter sets listens" + ("" if port else ": " + "".join(log)[-400:]))
        if port is None:
            return
        threading.Thread(target=lambda: [log.append(l) for l in proc.stderr], daemon=True).start()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/v1/models")
        ids = [d["id"] for d in json.loads(conn.getresponse().read())["data"]]
        check(ids == ["base", "ft", "whole"], "/v1/models lists the model and its adapter sets: %s" % ids)
        prompts = ["User: What color is the lemon?\nAssistant:", "User: Tell me the color of the sky.\nAssistant:"]
        jobs = [(mod, p) for mod in ("base", "ft", "whole") for p in prompts] * 2
        got = [None] * len(jobs)

        def ask(i):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            c.request("POST", "/v1/completions", json.dumps({"model": jobs[i][0], "prompt": jobs[i][1], "max_tokens": 16,
                                                             "temperature": 0}), {"Content-Type": "application/json"})
            r = json.loads(c.getresponse().read())
            got[i] = (r.get("model"), r["choices"][0]["text"]) if "choices" in r else (None, json.dumps(r))

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        solo = {}
        for mod, p in set(jobs):
            ck = {"base": "base", "ft": "ft", "whole": "whole"}[mod]
            g = run([LOOM, "-q", "generate", "--ckpt", ck, "--prompt", p, "--max-tokens", "16", "--temperature", "0",
                     "--no-stop", "--threads", "2"]).stdout
            g = g[:-1] if g.endswith("\n") else g  # generate ends its output with a newline
            solo[(mod, p)] = g[len(p):] if g.startswith(p) else g
        bad = [(jobs[i], got[i], solo[jobs[i]]) for i in range(len(jobs)) if got[i] != (jobs[i][0], solo[jobs[i]])]
        check(not bad, "%d concurrent requests over base, ft and whole: each equals that model alone (greedy)%s" % (
            len(jobs), "" if not bad else ": %r" % (bad[:2],)))
        conn.request("GET", "/metrics")
        metrics_text = conn.getresponse().read().decode()
        val = {k: float(v) for k, v in re.findall(r"^(loom_engine_steps_total|loom_generation_tokens_total) (\S+)$",
                                                   metrics_text, re.M)}
        check(val["loom_engine_steps_total"] < val["loom_generation_tokens_total"] / 2,
              "requests for different adapters batched together: %d steps for %d tokens" % (
                  val["loom_engine_steps_total"], val["loom_generation_tokens_total"]))
        check(len({got[i][1] for i in range(len(jobs)) if jobs[i][1] == prompts[0]}) > 1,
              "the adapter sets answer differently from the base (they are applied)")
        conn.request("POST", "/v1/completions", json.dumps({"model": "nope", "prompt": "x"}), {"Content-Type": "application/json"})
        r = conn.getresponse()
        check(r.status == 404, "an unknown model name: 404 (%d)" % r.status)
        r.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    os.chdir(WORK)
    rng = random.Random(5)
    # 1. a corpus of plain sentences, and a model pretrained on it
    words = ["the", "a", "small", "old", "river", "runs", "past", "town", "we", "saw", "it", "and", "then", "is",
             "was", "very", "near", "far", "light", "dark", "morning", "night", "walked", "home", "color"]
    with open("corpus.txt", "w") as f:  # plain sentences, some of them the facts the task will ask about
        for _ in range(6000):
            if rng.random() < 0.3:
                o = rng.choice(OBJECTS)
                f.write(rng.choice(["The %s is %s.", "A %s is %s.", "We saw the %s, and it was %s."]) % (o, COLOR_OF[o]) + "\n")
            else:
                f.write(" ".join(rng.choice(words + OBJECTS + COLORS) for _ in range(rng.randint(4, 10))).capitalize() + ".\n")
    run([LOOM, "-q", "data", "prepare", "corpus.txt", "--tokenizer", "byte", "--out", "pre"])
    train("base", "--preset", "demo", "--data", "pre", "--steps", "600", "--set", "optim.lr=3e-3")

    # 2. the task as JSONL, both layouts
    lines = []
    for o in OBJECTS:
        for q in ("What color is the %s?", "Tell me the color of the %s.", "Which color does the %s have?"):
            if o in HELD_OUT and q.startswith("What"):
                continue
            ans = "It is %s." % COLOR_OF[o]
            if rng.random() < 0.2:
                lines.append({"prompt": "User: %s\nAssistant:" % (q % o), "completion": " " + ans + "\n"})
            else:
                lines.append({"messages": [{"role": "user", "content": q % o}, {"role": "assistant", "content": ans}]})
    rng.shuffle(lines)
    lines = lines * 4
    with open("task.jsonl", "w") as f:
        for l in lines:
            f.write(json.dumps(l) + "\n")
    run([LOOM, "-q", "data", "prepare", "task.jsonl", "--format", "jsonl", "--tokenizer", "byte", "--chat-template",
         "plain", "--val-fraction", "0.1", "--out", "task"])
    man = json.load(open("task/dataset.json"))
    check(man["loss_mask"] is True and man["documents"] == len(lines) and man["token_bytes"] == 4,
          "jsonl prepare: %d examples, a loss mask, 4-byte tokens" % man["documents"])
    with open("bad.jsonl", "w") as f:
        f.write(json.dumps(lines[0]) + "\n" + json.dumps(lines[1]) + "\n" + '{"prompt": "x", "completion": 3}\n')
    p = run([LOOM, "-q", "data", "prepare", "bad.jsonl", "--format", "jsonl", "--tokenizer", "byte", "--out", "bad"],
            ok=False)
    check(p.returncode != 0 and "bad.jsonl:3" in p.stderr and not os.path.exists("bad/dataset.json"),
          "a malformed line: an error naming bad.jsonl:3, no dataset written (%s)" % p.stderr.strip().splitlines()[-1][:160])

    for bad, want in (('{"prompt": "x", "completion": "y"', "not JSON"), ('["x"]', "expected an object"),
                      ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant message"),
                      ('{"messages": [{"role": "wizard", "content": "hi"}]}', "'role' must be"),
                      ('{"messages": [{"role": "assistant", "content": 5}]}', "'content' must be"),
                      ('{"prompt": "x", "completion": ""}', "empty completion"), ('{"text": "x"}', "expected {")):
        with open("bad2.jsonl", "w") as f:
            f.write(json.dumps(lines[0]) + "\n\n" + bad + "\n")
        p = run([LOOM, "-q", "data", "prepare", "bad2.jsonl", "--format", "jsonl", "--tokenizer", "byte", "--out", "bad2"],
                ok=False)
        check(p.returncode != 0 and "bad2.jsonl:3" in p.stderr and want in p.stderr and not os.path.exists("bad2/dataset.json"),
              "malformed line %s: %s" % (bad[:40], p.stderr.strip().splitlines()[-1][-90:]))

    # 3. LoRA from the pretrained weights: the masked validation loss falls, the answers take the format
    lora = "r=8,alpha=16,targets=all"
    train("ft", "--init", "base", "--lora", lora, "--data", "task", "--steps", "300", "--set", "optim.lr=1e-2",
          "--set", "train.eval_interval=40", "--set", "optim.warmup_steps=10")
    vals = [r["val_loss"] for r in metrics("ft/metrics.jsonl") if "val_loss" in r]
    check(len(vals) >= 3 and vals[-1] < 0.5 * vals[0], "masked validation loss falls: %s" % ["%.3f" % v for v in vals])
    run([LOOM, "-q", "merge", "--ckpt", "ft", "--out", "merged"])
    p = run([MERGE_TEST, "ft", "merged"])
    check("PASS" in p.stdout, p.stdout.strip())
    for o in HELD_OUT:
        prompt = "User: What color is the %s?\nAssistant:" % o
        outs = []
        for ck in ("ft", "merged"):
            g = run([LOOM, "-q", "generate", "--ckpt", ck, "--prompt", prompt, "--max-tokens", "24", "--temperature",
                     "0", "--no-stop", "--threads", "2"])
            outs.append(g.stdout[len(prompt):] if g.stdout.startswith(prompt) else g.stdout)
        first = outs[0].split("\n")[0]
        check(re.fullmatch(r" It is [a-z]+\.", first) is not None,
              "held-out question answered in the task's format: %r" % first)
        check(outs[0] == outs[1], "the LoRA checkpoint and its merge generate the same text")

    # 4. what a run keeps: exact resume, data parallel with ZeRO, a bf16 base, clear refusals
    common = ["--init", "base", "--lora", lora, "--data", "task", "--set", "optim.lr=1e-2"]
    lora_d = lora.replace("targets", "dropout=0.1,targets")  # dropout: its masks must resume too
    dropped = ["--init", "base", "--lora", lora_d, "--data", "task", "--set", "optim.lr=1e-2"]
    train("whole", *dropped, "--steps", "30")
    train("halves", *dropped, "--steps", "30", "--set", "train.stop_after=15")
    train("halves", *dropped, "--steps", "30", "--resume")
    train("nodrop", *common, "--steps", "30")
    la = [r["loss"] for r in metrics("whole/metrics.jsonl") if "loss" in r]
    lb = [r["loss"] for r in metrics("halves/metrics.jsonl") if "loss" in r]
    check(la == lb, "a resumed LoRA run (dropout 0.1) follows the uninterrupted one's losses exactly (%d steps)" % len(la))
    ln = [r["loss"] for r in metrics("nodrop/metrics.jsonl") if "loss" in r]
    # B starts at zero, so step 1 is the base's loss either way; once B moves, dropout shows
    check(ln[0] == la[0] and ln[5] != la[5] and abs(ln[5] - la[5]) < 0.1 * ln[5],
          "dropout: step 1 equal (B = 0), step 6 differs a little: %.5f with, %.5f without" % (la[5], ln[5]))
    if shutil.which("mpirun"):
        train("one", *common, "--steps", "12")
        l1 = [r["loss"] for r in metrics("one/metrics.jsonl") if "loss" in r]
        for zero in ("1", "2", "3"):
            train("two" + zero, *common, "--steps", "12", "--zero", zero, mpi=2)
            l2 = [r["loss"] for r in metrics("two%s/metrics.jsonl" % zero) if "loss" in r]
            worst = max(abs(x - y) / abs(x) for x, y in zip(l1, l2))
            check(len(l1) == len(l2) == 12 and worst < 1e-4, "dp 2 with ZeRO-%s (the adapters sharded) follows one "
                  "process: worst relative loss difference %.2e" % (zero, worst))
    else:
        print("SKIP dp: mpirun not found")
    train("b16", *common, "--steps", "10", "--precision", "bf16", "--lora-base-dtype", "bf16")
    f32 = metrics("nodrop/metrics.jsonl")[0]
    b16 = metrics("b16/metrics.jsonl")[0]
    check(b16["mem_peak_params"] < 0.6 * f32["mem_peak_params"],
          "bf16-held base: params %.2f MiB against fp32's %.2f" % (b16["mem_peak_params"] / 2**20, f32["mem_peak_params"] / 2**20))
    p = train("halves", "--lora", "r=4,targets=qkv", "--data", "task", "--init", "base", "--steps", "30", "--resume", ok=False)
    check(p.returncode != 0 and "adapters" in p.stderr, "resume with other adapters refused: %s" %
          p.stderr.strip().splitlines()[-1][:160])
    p = train("halves", "--lora", lora_d, "--data", "task", "--steps", "30", "--resume", ok=False)
    check(p.returncode != 0 and "base" in p.stderr, "resume on another base refused: %s" % p.stderr.strip().splitlines()[-1][:160])
    for bad, want in ((["--lora", "r=0"], "r must"), (["--lora", "targets=head"], "head"),
                      (["--lora", "r=4", "--precision", "fp16"], "fp16"), (["--lora-base-dtype", "bf16"], "needs --lora")):
        p = train("bad", "--data", "task", "--steps", "2", *bad, ok=False)
        check(p.returncode != 0 and want in p.stderr, "%s refused: %s" % (" ".join(bad), p.stderr.strip().splitlines()[-1][:150]))
    peft_round_trip(lora)
    served_adapters()
    p = run([LOOM, "-q", "merge", "--ckpt", "base", "--out", "nomerge"], ok=False)
    check(p.returncode != 0 and "no LoRA" in p.stderr, "merging a plain checkpoint refused")
    print("%d failed" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
