#!/usr/bin/python3
"""Writes a DUMPFILE in tests/dump_ref.c's format, computed entirely by PyTorch in float32, to test
tests/torch_ref.py without loom (float32 torch stands in for loom's float32 results).

Usage: /usr/bin/python3 tests/make_fake_dump.py OUT [--family gpt2|llama] [--seed N] [--no-sgd-lars]
                                                    [--corrupt KIND]
KIND (each must make torch_ref.py FAIL):
  grad-scale   one gradient tensor multiplied by 1.01 (1e-2 relative)
  grad-elem    the largest element of one gradient perturbed by 1e-2 relative
  grad-mid     a mid-sized element (~5% of the tensor's max) of one gradient perturbed by 1e-1 relative
  logits       one logit off by 1e-3
  loss         loss off by 1e-3 relative
  adamw        one element of one AdamW result off by 1e-2*lr
  lamb         one LAMB tensor's update scaled by 1.01 (as a wrong trust ratio would)
  missing      one gradient record dropped
  truncated    the file cut short

The model here is deliberately written differently from torch_ref.py (F.layer_norm, F.linear, F.gelu,
repeat_interleave for GQA, F.cross_entropy, torch.optim.AdamW/SGD in float32), so that agreement between the two
also cross-checks the reference's own model definition.
"""
import argparse
import json
import math
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F


def rand_config(family, rng):
    H = int(rng.choice([2, 4]))
    hd = int(rng.choice([8, 16]))
    C = H * hd
    cfg = {"family": family, "n_layer": int(rng.integers(1, 4)), "n_head": H,
           "n_kv_head": H if family == "gpt2" else int(rng.choice([d for d in (1, 2, H) if H % d == 0])),
           "d_model": C, "d_ff": 4 * C if family == "gpt2" else int(rng.choice([48, 80, 96])),
           "vocab_size": int(rng.integers(50, 130)), "max_seq_len": 32,
           "norm_eps": 1e-5, "rope_theta": 10000.0, "tie_embeddings": family == "gpt2", "bias": family == "gpt2",
           "B": int(rng.integers(1, 4)), "T": int(rng.integers(5, 17)),
           "lr": 1e-2, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1, "step": 1}
    return cfg


def param_shapes(c):
    L, C, Fd, V, H, KV = c["n_layer"], c["d_model"], c["d_ff"], c["vocab_size"], c["n_head"], c["n_kv_head"]
    hd = C // H
    s = [("wte", (V, C))]
    if c["family"] == "gpt2":
        s.append(("wpe", (c["max_seq_len"], C)))
        for l in range(L):
            p = "h.%d." % l
            s += [(p + "ln_1.weight", (C,)), (p + "ln_1.bias", (C,)), (p + "attn.qkv.weight", (3 * C, C)),
                  (p + "attn.qkv.bias", (3 * C,)), (p + "attn.proj.weight", (C, C)), (p + "attn.proj.bias", (C,)),
                  (p + "ln_2.weight", (C,)), (p + "ln_2.bias", (C,)), (p + "mlp.fc.weight", (Fd, C)),
                  (p + "mlp.fc.bias", (Fd,)), (p + "mlp.proj.weight", (C, Fd)), (p + "mlp.proj.bias", (C,))]
        s += [("ln_f.weight", (C,)), ("ln_f.bias", (C,))]
    else:
        for l in range(L):
            p = "h.%d." % l
            s += [(p + "attn_norm.weight", (C,)), (p + "attn.qkv.weight", ((H + 2 * KV) * hd, C)),
                  (p + "attn.proj.weight", (C, H * hd)), (p + "mlp_norm.weight", (C,)),
                  (p + "mlp.gate_up.weight", (2 * Fd, C)), (p + "mlp.down.weight", (C, Fd))]
        s += [("norm_f.weight", (C,)), ("lm_head.weight", (V, C))]
    return s


def model_loss(c, P, tok, tgt):
    B, T = tok.shape
    C, H, KV = c["d_model"], c["n_head"], c["n_kv_head"]
    hd = C // H
    eps = c["norm_eps"]

    def rms(x, w):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def attend(q, k, v):  # [B,H,T,hd]
        att = torch.matmul(q, k.transpose(2, 3)) * (1.0 / math.sqrt(hd))
        att = att + torch.triu(torch.full((T, T), float("-inf")), diagonal=1)
        return torch.matmul(F.softmax(att, dim=-1), v)

    if c["family"] == "llama":
        # RoPE tables built per (position, pair) explicitly; pair j rotates dims j and j+hd/2
        cos = torch.empty(T, hd)
        sin = torch.empty(T, hd)
        for t in range(T):
            for j in range(hd // 2):
                a = t / (c["rope_theta"] ** (2 * j / hd))
                cos[t, j] = cos[t, j + hd // 2] = math.cos(a)
                sin[t, j] = sin[t, j + hd // 2] = math.sin(a)

        def rope(x):
            x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
            c1, s1 = cos[:, :hd // 2], sin[:, :hd // 2]
            return torch.cat([x1 * c1 - x2 * s1, x2 * c1 + x1 * s1], dim=-1)

    x = F.embedding(tok, P["wte"])
    if c["family"] == "gpt2":
        x = x + F.embedding(torch.arange(T), P["wpe"])
    for l in range(c["n_layer"]):
        p = "h.%d." % l
        if c["family"] == "gpt2":
            h = F.layer_norm(x, (C,), P[p + "ln_1.weight"], P[p + "ln_1.bias"], eps)
            q, k, v = F.linear(h, P[p + "attn.qkv.weight"], P[p + "attn.qkv.bias"]).split(C, dim=-1)
            q, k, v = (z.view(B, T, H, hd).permute(0, 2, 1, 3) for z in (q, k, v))
            y = attend(q, k, v).permute(0, 2, 1, 3).reshape(B, T, C)
            x = x + F.linear(y, P[p + "attn.proj.weight"], P[p + "attn.proj.bias"])
            h = F.layer_norm(x, (C,), P[p + "ln_2.weight"], P[p + "ln_2.bias"], eps)
            h = F.gelu(F.linear(h, P[p + "mlp.fc.weight"], P[p + "mlp.fc.bias"]), approximate="tanh")
            x = x + F.linear(h, P[p + "mlp.proj.weight"], P[p + "mlp.proj.bias"])
        else:
            h = rms(x, P[p + "attn_norm.weight"])
            q, k, v = F.linear(h, P[p + "attn.qkv.weight"]).split([H * hd, KV * hd, KV * hd], dim=-1)
            q = rope(q.view(B, T, H, hd).permute(0, 2, 1, 3))
            k = rope(k.view(B, T, KV, hd).permute(0, 2, 1, 3))
            v = v.view(B, T, KV, hd).permute(0, 2, 1, 3)
            k = k.repeat_interleave(H // KV, dim=1)
            v = v.repeat_interleave(H // KV, dim=1)
            y = attend(q, k, v).permute(0, 2, 1, 3).reshape(B, T, H * hd)
            x = x + F.linear(y, P[p + "attn.proj.weight"])
            h = rms(x, P[p + "mlp_norm.weight"])
            g, u = F.linear(h, P[p + "mlp.gate_up.weight"]).chunk(2, dim=-1)
            x = x + F.linear(F.silu(g) * u, P[p + "mlp.down.weight"])
    if c["family"] == "gpt2":
        x = F.layer_norm(x, (C,), P["ln_f.weight"], P["ln_f.bias"], eps)
        logits = F.linear(x, P["wte"])
    else:
        logits = F.linear(rms(x, P["norm_f.weight"]), P["lm_head.weight"])
    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), tgt.view(-1))
    return logits, loss


def torch_opt_step(c, params, grads, kind):
    ps = {n: torch.nn.Parameter(t.detach().clone()) for n, t in params.items()}
    for n in ps:
        ps[n].grad = grads[n].clone()
    dec = [ps[n] for n in ps if ps[n].dim() == 2]
    nodec = [ps[n] for n in ps if ps[n].dim() != 2]
    groups = [{"params": dec, "weight_decay": c["weight_decay"]}, {"params": nodec, "weight_decay": 0.0}]
    if kind == "adamw":
        o = torch.optim.AdamW(groups, lr=c["lr"], betas=(c["beta1"], c["beta2"]), eps=c["eps"])
    else:
        o = torch.optim.SGD(groups, lr=c["lr"], momentum=0.9, nesterov=True)
    o.step()
    return {n: p.detach() for n, p in ps.items()}


def lamb_step(c, params, grads):
    out = {}
    for n, p in params.items():
        g = grads[n]
        wd = c["weight_decay"] if p.dim() == 2 else 0.0
        m = (1 - c["beta1"]) * g
        v = (1 - c["beta2"]) * g * g
        upd = (m / (1 - c["beta1"])) / ((v / (1 - c["beta2"])).sqrt() + c["eps"]) + wd * p
        pn, un = torch.linalg.vector_norm(p), torch.linalg.vector_norm(upd)
        tr = (pn / un) if (pn > 0 and un > 0) else torch.tensor(1.0)
        out[n] = p - c["lr"] * tr * upd
    return out


def lars_step(c, params, grads):
    out = {}
    for n, p in params.items():
        g = grads[n]
        wd = c["weight_decay"] if p.dim() == 2 else 0.0
        pn, gn = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
        den = gn + wd * pn
        local = 0.001 * pn / den if (pn > 0 and den > 0) else torch.tensor(1.0)
        buf = torch.zeros_like(p).mul_(0.9).add_(c["lr"] * local * (g + wd * p))
        out[n] = p - buf
    return out


def put(f, name, dtype, arr):
    nb = name.encode("ascii")
    if dtype == 2:
        data = arr.encode("utf-8")
        shape = (len(data),)
    else:
        a = np.ascontiguousarray(arr, dtype=np.float32 if dtype == 0 else np.int32)
        data, shape = a.astype(a.dtype.newbyteorder("<")).tobytes(), a.shape
    f.write(struct.pack("<I", len(nb)) + nb + struct.pack("<II", dtype, len(shape)))
    f.write(struct.pack("<%dq" % len(shape), *shape))
    f.write(data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--family", choices=["gpt2", "llama"], default="gpt2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-sgd-lars", action="store_true")
    ap.add_argument("--corrupt", default="none",
                    choices=["none", "grad-scale", "grad-elem", "grad-mid", "logits", "loss", "adamw", "lamb",
                             "missing", "truncated"])
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    torch.manual_seed(a.seed)
    c = rand_config(a.family, rng)
    shapes = param_shapes(c)
    params = {}
    for n, s in shapes:
        if len(s) == 2:
            params[n] = torch.randn(*s) * 0.1
        else:  # norms and biases away from their trivial init, as dump_ref.c does
            base = 1.0 if n.endswith("norm.weight") or n.endswith("ln_1.weight") or n.endswith("ln_2.weight") \
                or n in ("ln_f.weight", "norm_f.weight") else 0.0
            params[n] = base + 0.1 * torch.randn(*s)
    B, T = c["B"], c["T"]
    tok = torch.randint(0, c["vocab_size"], (B, T))
    tgt = torch.randint(0, c["vocab_size"], (B, T))
    P = {n: t.clone().requires_grad_(True) for n, t in params.items()}
    logits, loss = model_loss(c, P, tok, tgt)
    loss.backward()
    grads = {n: P[n].grad.detach().clone() for n in P}
    logits = logits.detach().numpy().copy()
    lossv = np.array([loss.item()], dtype=np.float32)
    results = {"adamw": torch_opt_step(c, params, grads, "adamw"), "lamb": lamb_step(c, params, grads)}
    if not a.no_sgd_lars:
        results["sgd"] = torch_opt_step(c, params, grads, "sgd")
        results["lars"] = lars_step(c, params, grads)
    results = {k: {n: t.numpy().copy() for n, t in v.items()} for k, v in results.items()}
    gnp = {n: g.numpy().copy() for n, g in grads.items()}

    victim = [n for n, s in shapes if len(s) == 2][min(2, sum(1 for _, s in shapes if len(s) == 2) - 1)]
    if a.corrupt == "grad-scale":
        gnp[victim] *= np.float32(1.01)
    elif a.corrupt == "grad-elem":
        i = np.unravel_index(np.argmax(np.abs(gnp[victim])), gnp[victim].shape)
        gnp[victim][i] *= np.float32(1.01)
    elif a.corrupt == "grad-mid":
        g = gnp[victim]
        i = np.unravel_index(np.argmin(np.abs(np.abs(g) - 0.05 * np.abs(g).max())), g.shape)
        g[i] *= np.float32(1.1)
    elif a.corrupt == "logits":
        logits[0, 0, 0] += np.float32(1e-3)
    elif a.corrupt == "loss":
        lossv *= np.float32(1.001)
    elif a.corrupt == "adamw":
        results["adamw"][victim].flat[0] += np.float32(1e-2 * c["lr"])
    elif a.corrupt == "lamb":
        p0 = params[victim].numpy()
        results["lamb"][victim] = (p0 + 1.01 * (results["lamb"][victim] - p0)).astype(np.float32)

    with open(a.out, "wb") as f:
        put(f, "config", 2, json.dumps(c))
        put(f, "tokens", 1, tok.numpy())
        put(f, "targets", 1, tgt.numpy())
        for n, _ in shapes:
            put(f, "param/" + n, 0, params[n].numpy())
        put(f, "logits", 0, logits)
        put(f, "loss", 0, lossv)
        for n, _ in shapes:
            if a.corrupt == "missing" and n == victim:
                continue
            put(f, "grad/" + n, 0, gnp[n])
        for k, v in results.items():
            for n, _ in shapes:
                put(f, k + "/" + n, 0, v[n])
    if a.corrupt == "truncated":
        with open(a.out, "r+b") as f:
            f.seek(0, 2)
            f.truncate(f.tell() - 100)
    print("wrote %s: %s, corrupt=%s%s" % (a.out, json.dumps(c), a.corrupt,
                                          " (victim %s)" % victim if a.corrupt != "none" else ""))


if __name__ == "__main__":
    sys.exit(main())
