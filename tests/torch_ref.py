#!/usr/bin/python3
"""Independent numerical reference for loom, in PyTorch float64.

Usage: /usr/bin/python3 tests/torch_ref.py DUMPFILE

DUMPFILE is written by tests/dump_ref.c (or tests/make_fake_dump.py): a sequence of records, little endian,
    u32 name_len, name bytes, u32 dtype (0 f32, 1 i32, 2 utf-8 text), u32 ndim, i64 shape[ndim], raw data.
It holds the config, the batch, the initial parameters ("param/<name>") and loom's float32 results: logits, loss,
gradients ("grad/<name>") and the parameters after one step of each optimizer ("adamw/", "lamb/", and optionally
"sgd/", "lars/").

This program rebuilds the model from its own definition (plain torch ops written here, nothing shared with loom),
recomputes everything in float64 from the dumped initial parameters and compares. The float64 reference error
is ~1e-16 relative, i.e. negligible against loom's float32 results, so every reported error is loom's.

Prints one line per comparison (name, max abs err, max rel err, tolerance, PASS/FAIL, and err/tol: the largest
ratio of an element's error to its bound, 1 = at the limit) and finally
"N passed, M failed". Exit status 0 iff nothing failed.

Tolerances (why each is what it is):
  * logits, loss: |d| <= 1e-5 + 1e-4*|ref| elementwise. A float32 forward pass of a small model accumulates
    relative rounding of ~1e-6 (measured ~1e-6 abs on O(1) logits with torch float32); 1e-4 leaves two orders of
    magnitude for different (blocked, threaded) summation orders while a wrong op is off by >=1e-3.
  * gradients: elementwise |d| <= 1e-4*|ref| + 1e-5*max|ref| (the floor is relative to the tensor's own scale,
    because gradients have no natural absolute scale: they shrink with 1/(B*T), init std and depth). A gradient
    element is a sum of many products; when the terms cancel, its float32 absolute error is set by the size of the
    terms, not of the result, so a scale-relative floor is the right model of float32 error. Additionally the
    per-tensor max relative error over "significant" elements (|ref| > 1e-2*max|ref|) must be <= 1e-3: it catches
    an error confined to mid-sized elements that the floor alone could hide.
  * parameters after one optimizer step: |d| <= 1e-4*lr + 1e-5*|ref| elementwise. The reference step is fed loom's
    OWN dumped gradients (which are checked separately above), not the float64 reference gradients. Reason: at
    step 1 Adam's update is lr*g/(|g|+eps); for |g| of order eps (1e-8) a gradient difference far below the gradient
    tolerance changes the update by a sizeable fraction of lr, and near-zero gradients flip sign freely, so
    comparing against reference-gradient steps would test gradient noise, not the optimizer. (Example: the
    gradient of the key bias is exactly zero in exact arithmetic, softmax being shift invariant, so its float32
    value is pure rounding noise and AdamW turns it into +-lr updates: measured 0.1-0.3*lr off the float64 step.)
    With identical inputs the only difference left is float32 rounding of the update arithmetic: ~1e-7 of lr for
    the update and ~1 ulp of the parameter (6e-8 relative); the floor 1e-4*lr (the absolute floor is relative to the step size, which is
    what the update error scales with) and 1e-5 relative both leave >=100x margin, while a wrong formula (bias
    correction, decay on a vector, eps placement, trust ratio) is off by >=1e-2*lr.
    As information only, the AdamW step from the float64 reference gradients is also summarised (not a pass/fail).
  Measured with torch float32 standing in for loom (tests/make_fake_dump.py, both families, several random
  configs): worst err/tol 0.10 for logits, 0.075 for gradients (significant-element relative error <= 5e-5),
  0.01 for optimizer steps. Corrupted dumps fail by far: a gradient tensor scaled by 1.01 or its largest element
  perturbed by 1e-2 relative: err/tol ~90; one mid-sized gradient element off by 10%: ~330; one logit off by
  1e-3: ~10; one AdamW element off by 1e-2*lr: ~45; a LAMB trust ratio off by 1%: ~10.
"""
import json
import math
import struct
import sys

import numpy as np
import torch

torch.set_default_dtype(torch.float64)

DTYPES = {0: np.float32, 1: np.int32}
REQUIRED_OPT = ("adamw", "lamb")
OPTIONAL_OPT = ("sgd", "lars")
LARS_TRUST_COEF = 0.001
SGD_MOMENTUM = 0.9


class DumpError(Exception):
    pass


def read_dump(path):
    with open(path, "rb") as f:
        buf = f.read()
    recs, order, pos = {}, [], 0

    def take(n):
        nonlocal pos
        if pos + n > len(buf):
            raise DumpError("truncated file at byte %d (need %d more bytes, %d left)" % (pos, n, len(buf) - pos))
        b = buf[pos:pos + n]
        pos += n
        return b

    while pos < len(buf):
        (nl,) = struct.unpack("<I", take(4))
        if nl == 0 or nl > 4096:
            raise DumpError("bad name length %d at byte %d" % (nl, pos - 4))
        name = take(nl).decode("ascii")
        dtype, ndim = struct.unpack("<II", take(8))
        if dtype not in (0, 1, 2) or ndim > 8:
            raise DumpError("record %r: bad dtype %d or ndim %d" % (name, dtype, ndim))
        shape = struct.unpack("<%dq" % ndim, take(8 * ndim)) if ndim else ()
        if any(s < 0 for s in shape):
            raise DumpError("record %r: negative shape %s" % (name, shape))
        n = int(np.prod(shape)) if ndim else 1
        if dtype == 2:
            val = take(n).decode("utf-8")
        else:
            val = np.frombuffer(take(4 * n), dtype=np.dtype(DTYPES[dtype]).newbyteorder("<")).reshape(shape)
            val = val.astype(DTYPES[dtype])
        if name in recs:
            raise DumpError("duplicate record %r" % name)
        recs[name] = val
        order.append(name)
    return recs, order


# ----------------------------------------------------------------------------------------------------------------
# the model, written from the specification, float64


def expected_params(cfg):
    """Ordered dict-like list of (name, shape) the model must have."""
    fam = cfg["family"]
    L, C, F, V = cfg["n_layer"], cfg["d_model"], cfg["d_ff"], cfg["vocab_size"]
    H, KV = cfg["n_head"], cfg.get("n_kv_head", cfg["n_head"])
    hd = C // H
    bias = bool(cfg.get("bias", fam == "gpt2"))
    tie = bool(cfg.get("tie_embeddings", fam == "gpt2"))
    out = [("wte", (V, C))]
    if fam == "gpt2":
        out.append(("wpe", (cfg["max_seq_len"], C)))
        for l in range(L):
            p = "h.%d." % l
            out += [(p + "ln_1.weight", (C,))] + ([(p + "ln_1.bias", (C,))] if bias else [])
            out.append((p + "attn.qkv.weight", (3 * C, C)))
            if bias:
                out.append((p + "attn.qkv.bias", (3 * C,)))
            out.append((p + "attn.proj.weight", (C, C)))
            if bias:
                out.append((p + "attn.proj.bias", (C,)))
            out += [(p + "ln_2.weight", (C,))] + ([(p + "ln_2.bias", (C,))] if bias else [])
            out.append((p + "mlp.fc.weight", (F, C)))
            if bias:
                out.append((p + "mlp.fc.bias", (F,)))
            out.append((p + "mlp.proj.weight", (C, F)))
            if bias:
                out.append((p + "mlp.proj.bias", (C,)))
        out += [("ln_f.weight", (C,))] + ([("ln_f.bias", (C,))] if bias else [])
    elif fam == "llama":
        for l in range(L):
            p = "h.%d." % l
            out.append((p + "attn_norm.weight", (C,)))
            out.append((p + "attn.qkv.weight", ((H + 2 * KV) * hd, C)))
            if bias:
                out.append((p + "attn.qkv.bias", ((H + 2 * KV) * hd,)))
            out.append((p + "attn.proj.weight", (C, H * hd)))
            if bias:
                out.append((p + "attn.proj.bias", (C,)))
            out.append((p + "mlp_norm.weight", (C,)))
            out.append((p + "mlp.gate_up.weight", (2 * F, C)))
            if bias:
                out.append((p + "mlp.gate_up.bias", (2 * F,)))
            out.append((p + "mlp.down.weight", (C, F)))
            if bias:
                out.append((p + "mlp.down.bias", (C,)))
        out.append(("norm_f.weight", (C,)))
    else:
        raise DumpError("unknown family %r" % fam)
    if not tie:
        out.append(("lm_head.weight", (V, C)))
    return out


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)  # biased variance, as torch.nn.LayerNorm
    y = (x - mu) / torch.sqrt(var + eps) * w
    return y + b if b is not None else y  # bias=False: none


def rms_norm(x, w, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def linear(x, P, wname, bname):
    y = x @ P[wname].t()
    if bname in P:
        y = y + P[bname]
    return y


def causal_attention(q, k, v):
    """q [B,H,T,hd]; k, v [B,H,T,hd] (kv heads already mapped to query heads)."""
    T, hd = q.shape[-2], q.shape[-1]
    s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def rope_tables(T, hd, theta):
    inv_freq = torch.tensor([theta ** (-2.0 * i / hd) for i in range(hd // 2)])
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]  # [T, hd/2]
    emb = torch.cat([ang, ang], dim=-1)  # Hugging Face: concatenated twice
    return emb.cos(), emb.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def forward(cfg, P, tokens, targets):
    fam = cfg["family"]
    B, T = tokens.shape
    C, H = cfg["d_model"], cfg["n_head"]
    KV = cfg.get("n_kv_head", H)
    hd = C // H
    eps = cfg["norm_eps"]
    tok = torch.from_numpy(tokens.astype(np.int64))
    tgt = torch.from_numpy(targets.astype(np.int64))
    x = P["wte"][tok]
    if fam == "gpt2":
        x = x + P["wpe"][:T][None]
    else:
        cos, sin = rope_tables(T, hd, cfg["rope_theta"])
    for l in range(cfg["n_layer"]):
        p = "h.%d." % l
        if fam == "gpt2":
            h = layer_norm(x, P[p + "ln_1.weight"], P.get(p + "ln_1.bias"), eps)
            qkv = linear(h, P, p + "attn.qkv.weight", p + "attn.qkv.bias")
            q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
            q = q.reshape(B, T, H, hd).transpose(1, 2)
            k = k.reshape(B, T, H, hd).transpose(1, 2)
            v = v.reshape(B, T, H, hd).transpose(1, 2)
            y = causal_attention(q, k, v).transpose(1, 2).reshape(B, T, C)
            x = x + linear(y, P, p + "attn.proj.weight", p + "attn.proj.bias")
            h = layer_norm(x, P[p + "ln_2.weight"], P.get(p + "ln_2.bias"), eps)
            fc = linear(h, P, p + "mlp.fc.weight", p + "mlp.fc.bias")
            m = torch.nn.functional.gelu(fc) if cfg.get("gelu") == "erf" else gelu_tanh(fc)  # erf: nn.GELU(), exact
            x = x + linear(m, P, p + "mlp.proj.weight", p + "mlp.proj.bias")
        else:
            h = rms_norm(x, P[p + "attn_norm.weight"], eps)
            qkv = linear(h, P, p + "attn.qkv.weight", p + "attn.qkv.bias")
            q = qkv[..., :H * hd].reshape(B, T, H, hd).transpose(1, 2)
            k = qkv[..., H * hd:(H + KV) * hd].reshape(B, T, KV, hd).transpose(1, 2)
            v = qkv[..., (H + KV) * hd:].reshape(B, T, KV, hd).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            group = H // KV
            kv_of = torch.tensor([hh // group for hh in range(H)])
            y = causal_attention(q, k[:, kv_of], v[:, kv_of]).transpose(1, 2).reshape(B, T, H * hd)
            x = x + linear(y, P, p + "attn.proj.weight", p + "attn.proj.bias")
            h = rms_norm(x, P[p + "mlp_norm.weight"], eps)
            F = cfg["d_ff"]
            gu = linear(h, P, p + "mlp.gate_up.weight", p + "mlp.gate_up.bias")
            gate, up = gu[..., :F], gu[..., F:]
            m = (gate * torch.sigmoid(gate)) * up
            x = x + linear(m, P, p + "mlp.down.weight", p + "mlp.down.bias")
    if fam == "gpt2":
        x = layer_norm(x, P["ln_f.weight"], P.get("ln_f.bias"), eps)
    else:
        x = rms_norm(x, P["norm_f.weight"], eps)
    head = P["wte"] if cfg.get("tie_embeddings", fam == "gpt2") else P["lm_head.weight"]
    logits = x @ head.t()
    logp = torch.log_softmax(logits, dim=-1)
    loss = -logp.gather(-1, tgt[..., None]).mean()
    return logits, loss


# ----------------------------------------------------------------------------------------------------------------
# optimizers (float64), one step from a fresh state


def decays(shape):
    return len(shape) == 2


def ref_adamw(cfg, params, grads):
    names = list(params)
    ps = {n: torch.nn.Parameter(params[n].clone()) for n in names}
    for n in names:
        ps[n].grad = grads[n].clone()
    groups = [{"params": [ps[n] for n in names if decays(params[n].shape)], "weight_decay": cfg["weight_decay"]},
              {"params": [ps[n] for n in names if not decays(params[n].shape)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]),
                            eps=cfg["eps"])
    opt.step()
    return {n: ps[n].detach() for n in names}


def ref_sgd(cfg, params, grads):
    names = list(params)
    ps = {n: torch.nn.Parameter(params[n].clone()) for n in names}
    for n in names:
        ps[n].grad = grads[n].clone()
    groups = [{"params": [ps[n] for n in names if decays(params[n].shape)], "weight_decay": cfg["weight_decay"]},
              {"params": [ps[n] for n in names if not decays(params[n].shape)], "weight_decay": 0.0}]
    opt = torch.optim.SGD([g for g in groups if g["params"]], lr=cfg["lr"], momentum=SGD_MOMENTUM, nesterov=True)
    opt.step()
    return {n: ps[n].detach() for n in names}


def ref_lamb(cfg, params, grads):
    b1, b2, eps, lr, t = cfg["beta1"], cfg["beta2"], cfg["eps"], cfg["lr"], cfg.get("step", 1)
    out = {}
    for n, p in params.items():
        g = grads[n]
        wd = cfg["weight_decay"] if decays(p.shape) else 0.0
        m = (1 - b1) * g
        v = (1 - b2) * g * g
        mhat = m / (1 - b1 ** t)
        vhat = v / (1 - b2 ** t)
        r = mhat / (vhat.sqrt() + eps) + wd * p
        pn, rn = p.norm().item(), r.norm().item()
        trust = pn / rn if (pn > 0 and rn > 0) else 1.0
        out[n] = p - lr * trust * r
    return out


def ref_lars(cfg, params, grads):
    lr = cfg["lr"]
    out = {}
    for n, p in params.items():
        g = grads[n]
        wd = cfg["weight_decay"] if decays(p.shape) else 0.0
        gp = g + wd * p
        pn, gn = p.norm().item(), g.norm().item()
        den = gn + wd * pn
        local = LARS_TRUST_COEF * pn / den if (pn > 0 and den > 0) else 1.0
        u = lr * local * gp  # u = 0.9*0 + lr*local_lr*g'
        out[n] = p - u
    return out


# ----------------------------------------------------------------------------------------------------------------
# comparison


class Report:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def line(self, name, abs_err, rel_err, tol, ok, note="", used=None):
        s = "%-44s abs %.3e  rel %.3e  tol %-28s %s" % (name, abs_err, rel_err, tol, "PASS" if ok else "FAIL")
        if used is not None:
            s += "  err/tol %.3f" % used
        if note:
            s += "  (" + note + ")"
        print(s)
        if ok:
            self.passed += 1
        else:
            self.failed += 1

    def fail(self, name, why):
        print("%-44s %s FAIL" % (name, why))
        self.failed += 1


def errors(got, ref, sig_frac):
    """max abs err; max rel err over elements with |ref| > sig_frac*max|ref|; the arrays' difference."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    d = np.abs(got - ref)
    a = np.abs(ref)
    scale = float(a.max()) if a.size else 0.0
    sig = a > sig_frac * scale
    rel = float((d[sig] / a[sig]).max()) if sig.any() else 0.0
    nonfinite = not np.all(np.isfinite(got))
    return d, a, scale, float(d.max()) if d.size else 0.0, rel, nonfinite


def check_elementwise(rep, name, got, ref, atol, rtol, tol_text, sig_frac=1e-3, rel_limit=None):
    if tuple(np.shape(got)) != tuple(np.shape(ref)):
        rep.fail(name, "shape %s, expected %s" % (tuple(np.shape(got)), tuple(np.shape(ref))))
        return
    d, a, scale, mabs, mrel, nonfinite = errors(got, ref, sig_frac)
    bound = atol + rtol * a
    excess = d - bound
    used = float((d / np.maximum(bound, 1e-300)).max()) if d.size else 0.0
    ok = (not nonfinite) and bool(np.all(excess <= 0))
    note = ""
    if nonfinite:
        note = "non-finite values"
    elif not ok:
        i = np.unravel_index(int(np.argmax(d / np.maximum(bound, 1e-300))), d.shape)
        note = "worst at %s: got %.9g ref %.9g; %d/%d elements out" % (
            tuple(int(j) for j in i), float(np.asarray(got)[i]), float(np.asarray(ref)[i]),
            int((excess > 0).sum()), d.size)
    if rel_limit is not None and mrel > rel_limit:
        ok = False
        note = (note + "; " if note else "") + "significant-element rel err %.3e > %.1e" % (mrel, rel_limit)
    rep.line(name, mabs, mrel, tol_text, ok, note, used)


def main():
    if len(sys.argv) != 2:
        print("usage: torch_ref.py DUMPFILE", file=sys.stderr)
        return 2
    rep = Report()
    try:
        recs, _ = read_dump(sys.argv[1])
        if "config" not in recs:
            raise DumpError("no config record")
        cfg = json.loads(recs["config"])
        for k in ("family", "n_layer", "n_head", "d_model", "d_ff", "vocab_size", "max_seq_len", "norm_eps", "B",
                  "T", "lr", "beta1", "beta2", "eps", "weight_decay"):
            if k not in cfg:
                raise DumpError("config lacks %r" % k)
        if cfg["family"] == "llama" and "rope_theta" not in cfg:
            raise DumpError("config lacks 'rope_theta'")
        if cfg.get("step", 1) != 1:
            raise DumpError("only step 1 from a fresh optimizer state is supported (config step %r)" % cfg["step"])
        if cfg["d_model"] % cfg["n_head"] or cfg["n_head"] % cfg.get("n_kv_head", cfg["n_head"]):
            raise DumpError("inconsistent head counts")
        spec = expected_params(cfg)
    except (DumpError, OSError, ValueError, KeyError, UnicodeDecodeError) as e:
        rep.fail("dump", "unreadable: %s" % e)
        print("%d passed, %d failed" % (rep.passed, rep.failed))
        return 1

    B, T, V = cfg["B"], cfg["T"], cfg["vocab_size"]
    print("# %s: family %s L%d H%d KV%d C%d F%d V%d, B%d T%d, %d parameter tensors" % (
        sys.argv[1], cfg["family"], cfg["n_layer"], cfg["n_head"], cfg.get("n_kv_head", cfg["n_head"]),
        cfg["d_model"], cfg["d_ff"], V, B, T, len(spec)))

    # --- inputs and parameters must be present and well-formed
    fatal = False
    for k, dt in (("tokens", np.int32), ("targets", np.int32)):
        r = recs.get(k)
        if r is None or not isinstance(r, np.ndarray) or r.dtype != dt or r.shape != (B, T):
            rep.fail(k, "missing or not i32 [%d,%d]" % (B, T))
            fatal = True
        elif r.min() < 0 or r.max() >= V:
            rep.fail(k, "ids outside [0, %d)" % V)
            fatal = True
    if T > cfg["max_seq_len"]:
        rep.fail("config", "T %d > max_seq_len %d" % (T, cfg["max_seq_len"]))
        fatal = True
    expected = dict(spec)
    for prefix in ("param", "grad"):
        present = {n[len(prefix) + 1:] for n in recs if n.startswith(prefix + "/")}
        bad = []
        for n, shp in spec:
            r = recs.get(prefix + "/" + n)
            if r is None:
                bad.append("missing %s" % n)
            elif not isinstance(r, np.ndarray) or r.dtype != np.float32 or tuple(r.shape) != shp:
                bad.append("%s is %s %s, expected f32 %s" % (n, getattr(r, "dtype", "text"), getattr(r, "shape", ""), shp))
        bad += ["unexpected %s" % n for n in sorted(present - set(expected))]
        if bad:
            rep.fail("%s/* presence" % prefix, "; ".join(bad[:6]) + (" ..." if len(bad) > 6 else ""))
            fatal = fatal or prefix == "param"
        else:
            rep.line("%s/* presence (%d tensors)" % (prefix, len(spec)), 0.0, 0.0, "all present, shapes", True)
    if fatal:
        print("%d passed, %d failed" % (rep.passed, rep.failed))
        return 1

    names = [n for n, _ in spec]
    P = {n: torch.tensor(recs["param/" + n], dtype=torch.float64, requires_grad=True) for n in names}
    logits, loss = forward(cfg, P, recs["tokens"], recs["targets"])
    loss.backward()
    ref_grads = {n: (P[n].grad if P[n].grad is not None else torch.zeros_like(P[n])).detach() for n in names}

    # --- forward
    if "logits" in recs:
        check_elementwise(rep, "logits", recs["logits"], logits.detach().numpy(), 1e-5, 1e-4, "1e-5+1e-4*|ref|")
    else:
        rep.fail("logits", "missing")
    if "loss" in recs:
        check_elementwise(rep, "loss", np.asarray(recs["loss"]).reshape(-1)[:1], np.array([loss.item()]), 1e-5, 1e-4,
                          "1e-5+1e-4*|ref|")
        print("#   loss loom %.9f  ref %.12f" % (float(np.asarray(recs["loss"]).reshape(-1)[0]), loss.item()))
    else:
        rep.fail("loss", "missing")

    # --- gradients
    for n in names:
        if "grad/" + n not in recs or tuple(recs["grad/" + n].shape) != expected[n]:
            continue  # reported by the presence check
        ref = ref_grads[n].numpy()
        scale = float(np.abs(ref).max())
        check_elementwise(rep, "grad/" + n, recs["grad/" + n], ref, 1e-5 * scale, 1e-4,
                          "1e-4*|ref|+1e-5*max|ref|", sig_frac=1e-2, rel_limit=1e-3)

    # --- optimizers, fed loom's own gradients (see the header for why)
    have_grads = all("grad/" + n in recs and tuple(recs["grad/" + n].shape) == expected[n] for n in names)
    if not have_grads:
        rep.fail("optimizers", "skipped: gradients missing or malformed")
    else:
        p0 = {n: torch.tensor(recs["param/" + n], dtype=torch.float64) for n in names}
        g_loom = {n: torch.tensor(recs["grad/" + n], dtype=torch.float64) for n in names}
        lr = cfg["lr"]
        atol = 1e-4 * lr
        fns = {"adamw": ref_adamw, "lamb": ref_lamb, "sgd": ref_sgd, "lars": ref_lars}
        for opt in REQUIRED_OPT + OPTIONAL_OPT:
            present = [n for n in recs if n.startswith(opt + "/")]
            if not present:
                if opt in REQUIRED_OPT:
                    rep.fail(opt + "/*", "missing")
                else:
                    print("# %s records absent: not compared" % opt)
                continue
            bad = [n for n in names if opt + "/" + n not in recs or tuple(recs[opt + "/" + n].shape) != expected[n]]
            bad += ["unexpected " + n for n in present if n[len(opt) + 1:] not in expected]
            if bad:
                rep.fail(opt + "/* presence", "; ".join(bad[:6]))
            ref = fns[opt](cfg, p0, g_loom)
            for n in names:
                if opt + "/" + n in recs and tuple(recs[opt + "/" + n].shape) == expected[n]:
                    check_elementwise(rep, opt + "/" + n, recs[opt + "/" + n], ref[n].numpy(), atol, 1e-5,
                                      "%.0e(1e-4*lr)+1e-5*|ref|" % atol)
        # information only: AdamW from the float64 reference gradients
        if any(n.startswith("adamw/") for n in recs):
            ref = ref_adamw(cfg, p0, ref_grads)
            worst, where = 0.0, ""
            for n in names:
                if "adamw/" + n in recs and tuple(recs["adamw/" + n].shape) == expected[n]:
                    d = float(np.abs(recs["adamw/" + n].astype(np.float64) - ref[n].numpy()).max())
                    if d > worst:
                        worst, where = d, n
            print("# info: adamw vs the step from float64 reference gradients: max abs %.3e (%.3g lr) at %s" % (
                worst, worst / lr, where))

    print("%d passed, %d failed" % (rep.passed, rep.failed))
    return 0 if rep.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
