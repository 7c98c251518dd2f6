#!/usr/bin/python3
"""PyTorch peer for issue 3's "a published result reproduced": nanoGPT's README CPU recipe for character-level
Tiny Shakespeare, written out faithfully in one file. nanoGPT's command is

  python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1 \\
      --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 \\
      --dropout=0.0

with the config's other values: learning_rate 1e-3, min_lr 1e-4, warmup_iters 100, beta1 0.9, beta2 0.99,
weight_decay 0.1 (2-D parameters only), grad_clip 1.0, eval_interval 250, gradient_accumulation_steps 1, and
train.py's bias = False (no bias in Linear or LayerNorm; the config does not override it),
cosine decay; its README reports a validation loss of about 1.88.

What is reproduced from nanoGPT (data/shakespeare_char/prepare.py, model.py, train.py, master):
  - data: vocabulary = the sorted set of the file's characters (65 for Tiny Shakespeare), the first 90% of the file
    (by position) for training and the rest for validation; a batch is B windows starting at
    torch.randint(len(split) - block_size, (B,)) from the global RNG, targets shifted by one.
  - model: GPT-2 block (pre-LayerNorm without bias (bias=False), eps 1e-5; causal self-attention, the manual path with a tril mask
    because torch 1.13 has no scaled_dot_product_attention; MLP 4C with nn.GELU() = the exact erf GELU, NOT the tanh
    approximation GPT-2 uses; loom's nanogpt-char preset uses the exact one too), learned positions, tied wte/lm_head, dropout modules (p = 0 here). Module
    names, construction order and init are nanoGPT's (N(0, 0.02) for Linear and Embedding,
    c_proj.weight N(0, 0.02/sqrt(2 n_layer))), so a given seed draws the same initial weights as nanoGPT.
  - optimizer: configure_optimizers (AdamW, weight decay on dim >= 2 parameters, none on biases and LayerNorms,
    eps 1e-8, torch's default non-foreach implementation), grad-norm clip 1.0, get_lr of current master
    (warm-up lr * (it+1)/(warmup+1), then cosine from lr to min_lr by lr_decay_iters).
  - the loop: the first batch drawn before the loop, the next one drawn after each forward (before backward), an
    estimate_loss (model.eval(), eval_iters batches of each split from the same global RNG) every eval_interval
    iterations starting at iteration 0, and with --out a ckpt.pt (model, optimizer, args) saved whenever the
    validation loss improves (always_save_checkpoint = False in the config), as nanoGPT does.
  - seed: nanoGPT seeds torch.manual_seed(1337); --seed S seeds torch.manual_seed(S) (default 1337).
Differences: nanoGPT's loop evaluates at iteration max_iters and then trains one more step (iteration 2000, whose
update nothing measures) before it stops; this script stops after that evaluation, so it trains exactly max_iters
steps (the reported loss is the same; the skipped step would only add ~40 ms). With a --max-iters that is not a
multiple of --eval-interval it also evaluates at the end, so a final validation loss always exists. No tensorboard/wandb; data is read
from the text file directly instead of prepare.py's train.bin/val.bin (the same tokens).

Usage (under the tuned environment of shared PERFORMANCE.md; bench/peer_env.sh sets it up):
  bench/peer_env.sh /usr/bin/python3 bench/torch_nanogpt_char.py [--data PATH] [--seed S] [--threads 2]
      [--max-iters 2000] [--eval-interval 250] [--eval-iters 20] [--metrics FILE.jsonl] [--out DIR] [--quiet]

Output: nanoGPT's log lines ("iter N: loss ...", "step N: train loss ..., val loss ...") on stderr unless --quiet,
and on stdout a final JSON line {"summary": true, "final_val_loss", "final_train_loss", "wall_s", ...}; wall_s is
the whole run, evaluations and checkpoint saves included, from model creation to the end (data loading, which
precedes it, is data_s). --metrics writes one JSON line per iteration {"step", "iter", "loss", "lr", "ms",
"tokens_per_sec"} and per evaluation {"step", "val_loss", "train_loss"} (the keys `loom plot` reads). "step" counts
optimizer updates done, as loom's metrics do: nanoGPT's "iter i" loss (the batch before update i) is step i+1; an
evaluation at iteration k is step k.
"""
import argparse
import json
import math
import os
import resource
import sys
import time

import torch
import torch.nn as nn
from torch.nn import functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(REPO, "..", "shared", "data", "tinyshakespeare.txt")

# config/train_shakespeare_char.py with the README's CPU overrides
CFG = dict(
    block_size=64, batch_size=12, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False,
    learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=2000, max_iters=2000,
    beta1=0.9, beta2=0.99, weight_decay=1e-1, grad_clip=1.0, eval_interval=250, eval_iters=20,
    gradient_accumulation_steps=1, always_save_checkpoint=False,
)


# ---------------------------------------------------------------------------------------------- nanoGPT's model.py
class LayerNorm(nn.Module):
    """LayerNorm but with an optional bias (nanoGPT's)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config["n_embd"] % config["n_head"] == 0
        self.c_attn = nn.Linear(config["n_embd"], 3 * config["n_embd"], bias=config["bias"])
        self.c_proj = nn.Linear(config["n_embd"], config["n_embd"], bias=config["bias"])
        self.attn_dropout = nn.Dropout(config["dropout"])
        self.resid_dropout = nn.Dropout(config["dropout"])
        self.n_head = config["n_head"]
        self.n_embd = config["n_embd"]
        self.dropout = config["dropout"]
        self.flash = hasattr(F, "scaled_dot_product_attention")  # torch >= 2.0; Debian's 1.13 lacks it
        if not self.flash:
            bs = config["block_size"]
            self.register_buffer("bias", torch.tril(torch.ones(bs, bs)).view(1, 1, bs, bs))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.flash:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None,
                                               dropout_p=self.dropout if self.training else 0, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config["n_embd"], 4 * config["n_embd"], bias=config["bias"])
        self.gelu = nn.GELU()  # exact (erf) GELU, nanoGPT's choice; loom uses the tanh approximation
        self.c_proj = nn.Linear(4 * config["n_embd"], config["n_embd"], bias=config["bias"])
        self.dropout = nn.Dropout(config["dropout"])

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config["n_embd"], bias=config["bias"])
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config["n_embd"], bias=config["bias"])
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config["vocab_size"], config["n_embd"]),
            wpe=nn.Embedding(config["block_size"], config["n_embd"]),
            drop=nn.Dropout(config["dropout"]),
            h=nn.ModuleList([Block(config) for _ in range(config["n_layer"])]),
            ln_f=LayerNorm(config["n_embd"], bias=config["bias"]),
        ))
        self.lm_head = nn.Linear(config["n_embd"], config["vocab_size"], bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config["n_layer"]))

    def get_num_params(self, non_embedding=True):
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        assert t <= self.config["block_size"]
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        tok_emb = self.transformer.wte(idx)
        pos_emb = self.transformer.wpe(pos)
        x = self.transformer.drop(tok_emb + pos_emb)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:
            logits = self.lm_head(x[:, [-1], :])
            loss = None
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas):
        param_dict = {pn: p for pn, p in self.named_parameters() if p.requires_grad}
        decay_params = [p for n, p in param_dict.items() if p.dim() >= 2]
        nodecay_params = [p for n, p in param_dict.items() if p.dim() < 2]
        optim_groups = [
            {"params": decay_params, "weight_decay": weight_decay},
            {"params": nodecay_params, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas)  # CPU: no fused


# ---------------------------------------------------------------------------------------------- loom interop
# (not nanoGPT's: used by bench/nanogpt_crosseval.py and bench/nanogpt_lockstep.py to compare the two)
LOOM_NAMES = {"attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj", "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}


def from_loom_checkpoint(model, path):
    """Loads a loom checkpoint.bin (docs/FORMATS.md) into this GPT: loom's names -> nanoGPT's; returns model."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from loom_files import read_ckpt_params
    _, params = read_ckpt_params(path)
    state = {}
    for k, v in model.state_dict().items():
        if k.endswith(".attn.bias"):  # the causal mask buffer, not a parameter
            state[k] = v
            continue
        n = k.replace("transformer.", "")
        if n in ("wte.weight", "lm_head.weight"):
            n = "wte"
        elif n == "wpe.weight":
            n = "wpe"
        for x, y in LOOM_NAMES.items():
            n = n.replace(x, y)
        state[k] = torch.from_numpy(params[n])
    model.load_state_dict(state)
    return model


@torch.no_grad()
def window_losses(model, tokens, block_size, stride=16):
    """Each window's mean loss, for windows of block_size starting every stride tokens of a split (1-D
    LongTensor), as a 1-D tensor."""
    was_training = model.training
    model.eval()
    starts = torch.arange(0, len(tokens) - block_size - 1, stride)
    out = torch.empty(len(starts))
    for i in range(0, len(starts), 256):
        idx = starts[i:i + 256, None] + torch.arange(block_size)
        logits, _ = model(tokens[idx], tokens[idx + 1])
        out[i:i + len(idx)] = F.cross_entropy(logits.transpose(1, 2), tokens[idx + 1], reduction="none").mean(1)
    model.train(was_training)
    return out


def whole_split_loss(model, tokens, block_size, stride=16):
    """The split's loss without the sampling noise of a few random batches: the mean of window_losses."""
    return window_losses(model, tokens, block_size, stride).mean().item()


# ---------------------------------------------------------------------------------------------- environment check
def tuned_env_problems(threads):
    probs = []
    if "OPENBLAS_CORETYPE" in os.environ:
        probs.append("OPENBLAS_CORETYPE=%s is set (pins OpenBLAS's kernel)" % os.environ["OPENBLAS_CORETYPE"])
    if "tcmalloc" not in os.environ.get("LD_PRELOAD", ""):
        probs.append("tcmalloc not preloaded")
    if os.environ.get("TCMALLOC_RELEASE_RATE") != "0":
        probs.append("TCMALLOC_RELEASE_RATE is not 0")
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        probs.append("OMP_WAIT_POLICY is not PASSIVE")
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        if os.environ.get(v) != str(threads):
            probs.append("%s=%s, not %d" % (v, os.environ.get(v), threads))
    return probs


# ---------------------------------------------------------------------------------------------- nanoGPT's train.py
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA, help="the text file (default ../shared/data/tinyshakespeare.txt "
                                                         "relative to the repository root)")
    ap.add_argument("--seed", type=int, default=1337, help="torch.manual_seed (nanoGPT: 1337)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-iters", type=int, default=CFG["max_iters"],
                    help="training iterations (also lr_decay_iters, as in the README command)")
    ap.add_argument("--eval-interval", type=int, default=CFG["eval_interval"])
    ap.add_argument("--eval-iters", type=int, default=CFG["eval_iters"], help="batches per split per evaluation")
    ap.add_argument("--metrics", default="", help="JSON-lines metrics file")
    ap.add_argument("--out", default="", help="nanoGPT's out_dir: ckpt.pt saved there when the val loss improves "
                                              "(default: no checkpoints)")
    ap.add_argument("--quiet", action="store_true", help="no per-iteration log lines on stderr")
    a = ap.parse_args()
    if a.max_iters < 1 or a.eval_interval < 1 or a.eval_iters < 1 or a.threads < 1:
        ap.error("bad arguments")

    cfg = dict(CFG, max_iters=a.max_iters, lr_decay_iters=a.max_iters, eval_interval=a.eval_interval,
               eval_iters=a.eval_iters)
    probs = tuned_env_problems(a.threads)
    for p in probs:
        print("torch_nanogpt_char.py: warning: not the tuned environment: %s (run under bench/peer_env.sh)" % p,
              file=sys.stderr)
    torch.set_num_threads(a.threads)

    def log(msg):
        if not a.quiet:
            print(msg, file=sys.stderr, flush=True)

    # data (prepare.py): char vocabulary, 90/10 split by position
    t_data = time.perf_counter()
    with open(a.data, "r") as f:
        text = f.read()
    chars = sorted(list(set(text)))
    vocab_size = len(chars)
    stoi = {ch: i for i, ch in enumerate(chars)}
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.int64)
    n = len(text)
    train_data = ids[:int(n * 0.9)]
    val_data = ids[int(n * 0.9):]
    data_s = time.perf_counter() - t_data
    log("length of dataset in characters: %d, vocab size %d, train %d tokens, val %d tokens"
        % (n, vocab_size, len(train_data), len(val_data)))

    block_size, batch_size = cfg["block_size"], cfg["batch_size"]
    arange = torch.arange(block_size)

    def get_batch(split):
        data = train_data if split == "train" else val_data
        ix = torch.randint(len(data) - block_size, (batch_size,))
        idx = ix[:, None] + arange  # the same windows as nanoGPT's torch.stack of slices
        return data[idx], data[idx + 1]

    t_start = time.perf_counter()
    torch.manual_seed(a.seed)
    model_args = dict(n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"], block_size=block_size,
                      bias=cfg["bias"], vocab_size=vocab_size, dropout=cfg["dropout"])
    model = GPT(model_args)
    log("number of parameters: %.2fM" % (model.get_num_params() / 1e6,))
    optimizer = model.configure_optimizers(cfg["weight_decay"], cfg["learning_rate"], (cfg["beta1"], cfg["beta2"]))

    @torch.no_grad()
    def estimate_loss():
        out = {}
        model.eval()
        for split in ["train", "val"]:
            losses = torch.zeros(cfg["eval_iters"])
            for k in range(cfg["eval_iters"]):
                X, Y = get_batch(split)
                logits, loss = model(X, Y)
                losses[k] = loss.item()
            out[split] = losses.mean().item()
        model.train()
        return out

    def get_lr(it):
        if it < cfg["warmup_iters"]:
            return cfg["learning_rate"] * (it + 1) / (cfg["warmup_iters"] + 1)
        if it > cfg["lr_decay_iters"]:
            return cfg["min_lr"]
        decay_ratio = (it - cfg["warmup_iters"]) / (cfg["lr_decay_iters"] - cfg["warmup_iters"])
        assert 0 <= decay_ratio <= 1
        coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
        return cfg["min_lr"] + coeff * (cfg["learning_rate"] - cfg["min_lr"])

    metrics = open(a.metrics, "w") if a.metrics else None

    def emit(rec):
        if metrics:
            metrics.write(json.dumps(rec) + "\n")

    if a.out:
        os.makedirs(a.out, exist_ok=True)
    tokens_per_iter = cfg["gradient_accumulation_steps"] * batch_size * block_size
    X, Y = get_batch("train")
    iter_num, best_val_loss = 0, 1e9
    step_times, eval_s, ckpt_s, n_evals, n_ckpts = [], 0.0, 0.0, 0, 0
    last = None
    while True:
        lr = get_lr(iter_num)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        if iter_num % cfg["eval_interval"] == 0 or iter_num == cfg["max_iters"]:
            te = time.perf_counter()
            losses = estimate_loss()
            eval_s += time.perf_counter() - te
            n_evals += 1
            last = (iter_num, losses)
            log("step %d: train loss %.4f, val loss %.4f" % (iter_num, losses["train"], losses["val"]))
            emit({"step": iter_num, "val_loss": round(losses["val"], 6), "train_loss": round(losses["train"], 6)})
            if (losses["val"] < best_val_loss or cfg["always_save_checkpoint"]):
                best_val_loss = losses["val"]
                if iter_num > 0 and a.out:
                    tc = time.perf_counter()
                    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "model_args": model_args, "iter_num": iter_num, "best_val_loss": best_val_loss,
                                "config": cfg, "chars": chars}, os.path.join(a.out, "ckpt.pt"))
                    ckpt_s += time.perf_counter() - tc
                    n_ckpts += 1
                    log("saving checkpoint to %s" % a.out)
        if iter_num >= cfg["max_iters"]:
            break  # nanoGPT trains one more (unmeasured) step here before it stops
        t0 = time.perf_counter()
        for micro_step in range(cfg["gradient_accumulation_steps"]):
            logits, loss = model(X, Y)
            loss = loss / cfg["gradient_accumulation_steps"]
            X, Y = get_batch("train")
            loss.backward()
        if cfg["grad_clip"] != 0.0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lossf = loss.item() * cfg["gradient_accumulation_steps"]  # log_interval = 1
        dt = time.perf_counter() - t0
        step_times.append(dt)
        log("iter %d: loss %.4f, time %.2fms" % (iter_num, lossf, dt * 1000))
        emit({"step": iter_num + 1, "iter": iter_num, "loss": round(lossf, 6), "lr": lr, "ms": round(dt * 1e3, 3),
              "tokens_per_sec": round(tokens_per_iter / dt, 2)})
        iter_num += 1
    wall_s = time.perf_counter() - t_start
    if metrics:
        metrics.close()

    st = sorted(step_times)
    med = st[len(st) // 2]
    print(json.dumps({
        "summary": True, "system": "pytorch", "recipe": "nanogpt-shakespeare-char-cpu", "torch": torch.__version__,
        "seed": a.seed, "threads": a.threads, "iters": iter_num, "final_step": last[0],
        "final_val_loss": round(last[1]["val"], 6), "final_train_loss": round(last[1]["train"], 6),
        "best_val_loss": round(best_val_loss, 6), "wall_s": round(wall_s, 3), "data_s": round(data_s, 3),
        "train_s": round(sum(step_times), 3), "eval_s": round(eval_s, 3), "evals": n_evals,
        "ckpt_s": round(ckpt_s, 3), "ckpts": n_ckpts, "median_step_ms": round(med * 1e3, 3),
        "tokens_per_sec": round(tokens_per_iter / med, 2), "params": model.get_num_params(non_embedding=False),
        "vocab_size": vocab_size, "gelu": "erf", "attention": "sdpa" if HAS_SDPA else "manual",
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "tuned_env": not probs}),
        flush=True)
    return 0


HAS_SDPA = hasattr(F, "scaled_dot_product_attention")

if __name__ == "__main__":
    sys.exit(main())
