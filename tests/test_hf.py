#!/usr/bin/python3
"""Hugging Face interchange tests for `loom import` / `loom export` (run with /usr/bin/python3: torch + numpy).

  test_hf.py roundtrip gpt2|llama LOOM TEST_HF_LOGITS WORKDIR
  test_hf.py errors LOOM WORKDIR

roundtrip: builds small random models in Hugging Face's names and layouts (GPT2LMHeadModel: Conv1D weights
[in, out]; LlamaForCausalLM: nn.Linear [out, in], separate q/k/v and gate/up), writes them as safetensors with
bytes written here (8-byte header length, JSON header, raw data; single file, sharded with an index; F32, BF16,
F16), imports them with `loom import`, computes logits with loom (tests/test_hf_logits.c, loom_model_forward on
the imported checkpoint) and compares them with a float64 forward pass written here against the Hugging Face
layout (so the name/layout mapping is checked independently of loom's). Then `loom export` and checks the
exported tensors equal the originals bit for bit, and re-imports (single and sharded exports) and checks the
checkpoint's parameters are identical. Finally `loom train --resume` continues from an imported checkpoint and `loom generate --ckpt` samples from it.

Tolerance: logits |loom - ref| <= 1e-5 + 1e-4*|ref| (as tests/torch_ref.py, whose reasoning applies: float32
forward of a small model vs a float64 reference). For BF16/F16 sources the reference uses the rounded weights
(exactly what was written), so the bound is the same.

errors: damaged files and configs give exit status 1 and exactly one error line naming the file and tensor, and
leave no checkpoint behind.
"""
import json
import math
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loom_files import read_ckpt_sections  # noqa: E402
from torch_ref import causal_attention, gelu_tanh, layer_norm, rms_norm, rope_tables, rotate_half  # noqa: E402

torch.set_default_dtype(torch.float64)

FAILED = []


def check(ok, what):
    print("%s %s" % ("ok  " if ok else "FAIL", what), flush=True)
    if not ok:
        FAILED.append(what)
    return ok


# ------------------------------------------------------------------------------------------------------------
# safetensors bytes, written and read here


def encode(t32, dtype):
    """float32 numpy array -> (raw little-endian bytes, the float64 values those bytes hold)."""
    t = torch.from_numpy(np.array(t32, dtype=np.float32))
    if dtype == "F32":
        return t.numpy().astype("<f4").tobytes(), t.to(torch.float64)
    if dtype == "BF16":
        b = t.to(torch.bfloat16)
        return b.view(torch.int16).numpy().astype("<i2").tobytes(), b.to(torch.float64)
    if dtype == "F16":
        h = t.to(torch.float16)
        return h.numpy().astype("<f2").tobytes(), h.to(torch.float64)
    raise ValueError(dtype)


def st_bytes(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, raw). The safetensors file's bytes."""
    header, off = {}, 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dt, shape, raw in tensors:
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(t[3] for t in tensors)


DT_SIZE = {"F32": 4, "BF16": 2, "F16": 2, "F64": 8, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}


def st_read(path):
    """name -> (dtype, shape, raw bytes), checking the layout."""
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    hdr = json.loads(buf[8:8 + n])
    data = buf[8 + n:]
    out, spans = {}, []
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        assert e - b == int(np.prod(v["shape"], dtype=np.int64)) * DT_SIZE[v["dtype"]], (path, k)
        out[k] = (v["dtype"], tuple(v["shape"]), data[b:e])
        spans.append((b, e))
    spans.sort()
    at = 0
    for b, e in spans:
        assert b == at, (path, "gap or overlap")
        at = e
    assert at == len(data), (path, "trailing bytes")
    assert (8 + n) % 8 == 0, (path, "data area not 8-byte aligned")
    return out, hdr.get("__metadata__")


def st_read_dir(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        out = {}
        for shard in sorted(set(wm.values())):
            t, _ = st_read(os.path.join(d, shard))
            for k in t:
                assert wm[k] == shard
            out.update(t)
        assert set(out) == set(wm)
        return out, sorted(set(wm.values()))
    t, meta = st_read(os.path.join(d, "model.safetensors"))
    assert meta == {"format": "pt"}, meta
    return t, ["model.safetensors"]


def write_model_dir(d, config, tensors, shards=1, extra_files=None):
    """tensors: list of (name, dtype, shape, raw). Writes config.json and one file or `shards` shards + index."""
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if shards == 1:
        with open(os.path.join(d, "model.safetensors"), "wb") as f:
            f.write(st_bytes(tensors, {"format": "pt"}))
        return
    per = (len(tensors) + shards - 1) // shards
    wm, total = {}, 0
    for s in range(shards):
        part = tensors[s * per:(s + 1) * per]
        name = "model-%05d-of-%05d.safetensors" % (s + 1, shards)
        with open(os.path.join(d, name), "wb") as f:
            f.write(st_bytes(part, {"format": "pt"}))
        for t in part:
            wm[t[0]] = name
            total += len(t[3])
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2)


# ------------------------------------------------------------------------------------------------------------
# models in Hugging Face layout, random weights, float64 forward written against that layout


def gpt2_model(rng, prefix="transformer.", n_inner=None, vocab=97):
    cfg = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": vocab, "n_positions": 32,
           "n_embd": 64, "n_layer": 2, "n_head": 4, "n_inner": n_inner, "activation_function": "gelu_new",
           "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "tie_word_embeddings": True}
    C, V, P, L = cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"], cfg["n_layer"]
    F = n_inner or 4 * C
    W = []  # (hf name, float32 array)

    def mat(*shape):
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)

    def vec(n, base=0.0):
        return (base + 0.1 * rng.standard_normal(n)).astype(np.float32)

    W.append((prefix + "wte.weight", mat(V, C)))
    W.append((prefix + "wpe.weight", mat(P, C)))
    for l in range(L):
        p = prefix + "h.%d." % l
        W += [(p + "ln_1.weight", vec(C, 1.0)), (p + "ln_1.bias", vec(C)),
              (p + "attn.c_attn.weight", mat(C, 3 * C)), (p + "attn.c_attn.bias", vec(3 * C)),
              (p + "attn.c_proj.weight", mat(C, C)), (p + "attn.c_proj.bias", vec(C)),
              (p + "ln_2.weight", vec(C, 1.0)), (p + "ln_2.bias", vec(C)),
              (p + "mlp.c_fc.weight", mat(C, F)), (p + "mlp.c_fc.bias", vec(F)),
              (p + "mlp.c_proj.weight", mat(F, C)), (p + "mlp.c_proj.bias", vec(C))]
    W += [(prefix + "ln_f.weight", vec(C, 1.0)), (prefix + "ln_f.bias", vec(C))]
    return cfg, W


def gpt2_forward(cfg, P, tokens, prefix="transformer."):
    """Hugging Face GPT2LMHeadModel in float64: Conv1D is x @ W + b with W [in, out]."""
    B, T = tokens.shape
    C, H = cfg["n_embd"], cfg["n_head"]
    hd = C // H
    eps = cfg["layer_norm_epsilon"]
    tok = torch.from_numpy(tokens.astype(np.int64))
    x = P[prefix + "wte.weight"][tok] + P[prefix + "wpe.weight"][:T][None]
    for l in range(cfg["n_layer"]):
        p = prefix + "h.%d." % l
        h = layer_norm(x, P[p + "ln_1.weight"], P[p + "ln_1.bias"], eps)
        qkv = h @ P[p + "attn.c_attn.weight"] + P[p + "attn.c_attn.bias"]
        q, k, v = qkv.split(C, dim=-1)
        q, k, v = (z.reshape(B, T, H, hd).transpose(1, 2) for z in (q, k, v))
        y = causal_attention(q, k, v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ P[p + "attn.c_proj.weight"] + P[p + "attn.c_proj.bias"]
        h = layer_norm(x, P[p + "ln_2.weight"], P[p + "ln_2.bias"], eps)
        m = gelu_tanh(h @ P[p + "mlp.c_fc.weight"] + P[p + "mlp.c_fc.bias"])
        x = x + m @ P[p + "mlp.c_proj.weight"] + P[p + "mlp.c_proj.bias"]
    x = layer_norm(x, P[prefix + "ln_f.weight"], P[prefix + "ln_f.bias"], eps)
    return x @ P[prefix + "wte.weight"].t()


def llama_model(rng, tie=False, bias=False, vocab=101):
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": 64,
           "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 32, "rms_norm_eps": 1e-6, "rope_theta": 500000.0, "hidden_act": "silu",
           "tie_word_embeddings": tie, "attention_bias": bias, "mlp_bias": bias, "rope_scaling": None}
    C, V, L, F = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = C // H

    def mat(*shape):
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)

    def vec(n, base=0.0):
        return (base + 0.1 * rng.standard_normal(n)).astype(np.float32)

    W = [("model.embed_tokens.weight", mat(V, C))]
    for l in range(L):
        p = "model.layers.%d." % l
        W.append((p + "input_layernorm.weight", vec(C, 1.0)))
        for nm, rows in (("q", H * hd), ("k", KV * hd), ("v", KV * hd)):
            W.append((p + "self_attn.%s_proj.weight" % nm, mat(rows, C)))
            if bias:
                W.append((p + "self_attn.%s_proj.bias" % nm, vec(rows)))
        W.append((p + "self_attn.o_proj.weight", mat(C, H * hd)))
        if bias:
            W.append((p + "self_attn.o_proj.bias", vec(C)))
        W.append((p + "post_attention_layernorm.weight", vec(C, 1.0)))
        for nm in ("gate", "up"):
            W.append((p + "mlp.%s_proj.weight" % nm, mat(F, C)))
            if bias:
                W.append((p + "mlp.%s_proj.bias" % nm, vec(F)))
        W.append((p + "mlp.down_proj.weight", mat(C, F)))
        if bias:
            W.append((p + "mlp.down_proj.bias", vec(C)))
    W.append(("model.norm.weight", vec(C, 1.0)))
    if not tie:
        W.append(("lm_head.weight", mat(V, C)))
    return cfg, W


def llama_forward(cfg, P, tokens):
    """Hugging Face LlamaForCausalLM in float64: nn.Linear (x @ W.T), rotate_half RoPE, repeat_kv."""
    B, T = tokens.shape
    C, H, KV = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = C // H
    eps = cfg["rms_norm_eps"]
    tok = torch.from_numpy(tokens.astype(np.int64))
    x = P["model.embed_tokens.weight"][tok]
    cos, sin = rope_tables(T, hd, cfg["rope_theta"])

    def lin(z, name):
        y = z @ P[name + ".weight"].t()
        return y + P[name + ".bias"] if name + ".bias" in P else y

    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        h = rms_norm(x, P[p + "input_layernorm.weight"], eps)
        q = lin(h, p + "self_attn.q_proj").reshape(B, T, H, hd).transpose(1, 2)
        k = lin(h, p + "self_attn.k_proj").reshape(B, T, KV, hd).transpose(1, 2)
        v = lin(h, p + "self_attn.v_proj").reshape(B, T, KV, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = H // KV  # repeat_kv: query head i reads kv head i // rep
        k = k[:, :, None].expand(B, KV, rep, T, hd).reshape(B, H, T, hd)
        v = v[:, :, None].expand(B, KV, rep, T, hd).reshape(B, H, T, hd)
        y = causal_attention(q, k, v).transpose(1, 2).reshape(B, T, H * hd)
        x = x + lin(y, p + "self_attn.o_proj")
        h = rms_norm(x, P[p + "post_attention_layernorm.weight"], eps)
        g = lin(h, p + "mlp.gate_proj")
        x = x + lin(torch.nn.functional.silu(g) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = rms_norm(x, P["model.norm.weight"], eps)
    head = P["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else P["lm_head.weight"]
    return x @ head.t()


# ------------------------------------------------------------------------------------------------------------
# running loom


def run(cmd, expect_ok=True):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
    if expect_ok and r.returncode != 0:
        print("command failed (%d): %s\n%s%s" % (r.returncode, " ".join(cmd), r.stdout, r.stderr), flush=True)
    return r


def loom_logits(helper, ckpt_dir, tokens, V, work):
    out = os.path.join(work, "logits.f32")
    B, T = tokens.shape
    r = run([helper, ckpt_dir, out, str(B), str(T)] + [str(int(t)) for t in tokens.reshape(-1)])
    if r.returncode != 0:
        return None
    return np.fromfile(out, dtype="<f4").reshape(B, T, V)


def compare_logits(name, got, ref):
    if got is None:
        return check(False, "%s: loom produced no logits" % name)
    d = np.abs(got.astype(np.float64) - ref)
    bound = 1e-5 + 1e-4 * np.abs(ref)
    ratio = float((d / bound).max())
    return check(bool(np.all(d <= bound)) and np.all(np.isfinite(got)),
                 "%s: logits vs float64 reference: max abs %.2e, err/tol %.3f (tol 1e-5+1e-4*|ref|, |ref| max %.2f)" % (
                     name, float(d.max()), ratio, float(np.abs(ref).max())))


def roundtrip(family, loom, helper, work):
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    rng = np.random.default_rng(20240611 if family == "gpt2" else 20240612)
    B, T = 2, 16
    # variants: (name, dtype, shards, builder options)
    if family == "gpt2":
        variants = [("gpt2_f32", "F32", 1, {"vocab": 256}),
                    ("gpt2_noprefix_sharded_buffers_lmhead", "F32", 3, {"prefix": "", "extras": True}),
                    ("gpt2_bf16_ninner", "BF16", 1, {"n_inner": 96}),
                    ("gpt2_f16", "F16", 2, {})]
    else:
        variants = [("llama_f32", "F32", 1, {"vocab": 256}),
                    ("llama_sharded_invfreq", "F32", 4, {"extras": True}),
                    ("llama_bf16", "BF16", 1, {}),
                    ("llama_f16_tied", "F16", 2, {"tie": True})]
    for vname, dtype, shards, opt in variants:
        print("# variant %s: %s, %d file%s" % (vname, dtype, shards, "s" if shards > 1 else ""), flush=True)
        prefix = opt.get("prefix", "transformer.")
        if family == "gpt2":
            cfg, W = gpt2_model(rng, prefix=prefix, n_inner=opt.get("n_inner"), vocab=opt.get("vocab", 97))
        else:
            cfg, W = llama_model(rng, tie=opt.get("tie", False), bias=opt.get("bias", False), vocab=opt.get("vocab", 101))
        V = cfg["vocab_size"]
        tensors, P = [], {}
        for name, arr in W:
            raw, val = encode(arr, dtype)
            tensors.append((name, dtype, arr.shape, raw))
            P[name] = val
        originals = {t[0]: t for t in tensors}
        if opt.get("extras"):
            # what older checkpoints carry besides the weights: loom must ignore these
            if family == "gpt2":
                L, npos = cfg["n_layer"], cfg["n_positions"]
                mask = np.tril(np.ones((npos, npos), dtype=np.float32)).reshape(1, 1, npos, npos)
                for l in range(L):
                    tensors.append((prefix + "h.%d.attn.bias" % l, "F32", mask.shape, mask.astype("<f4").tobytes()))
                    tensors.append((prefix + "h.%d.attn.masked_bias" % l, "F32", (), np.float32(-1e4).tobytes()))
                raw, _ = encode(W[0][1], dtype)  # the tied head, stored anyway
                tensors.append(("lm_head.weight", dtype, W[0][1].shape, raw))
            else:
                hd = cfg["hidden_size"] // cfg["num_attention_heads"]
                inv = (1.0 / (cfg["rope_theta"] ** (np.arange(0, hd, 2) / hd))).astype(np.float32)
                for l in range(cfg["num_hidden_layers"]):
                    tensors.append(("model.layers.%d.self_attn.rotary_emb.inv_freq" % l, "F32", inv.shape,
                                    inv.astype("<f4").tobytes()))
        src = os.path.join(work, vname + "_hf")
        write_model_dir(src, cfg, tensors, shards=shards)
        # a Jinja chat template that loom serve has built in (recognised by its turn markers)
        tmpl = {"gpt2": ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
                         "chatml"),
                "llama": ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>"
                          "\n\n{{ m.content }}<|eot_id|>{% endfor %}", "llama3")}[family]
        with open(os.path.join(src, "tokenizer_config.json"), "w") as f:
            json.dump({"chat_template": tmpl[0]}, f)
        ck = os.path.join(work, vname + "_loom")
        r = run([loom, "-q", "import", "--format", "hf", src, "--out", ck])
        if not check(r.returncode == 0, "%s: loom import" % vname):
            continue
        info = run([loom, "ckpt", "info", ck]).stdout
        check('"chat_template":"%s"' % tmpl[1] in info, "%s: the import records the chat template %s" % (vname, tmpl[1]))
        tokens = rng.integers(0, V, size=(B, T)).astype(np.int32)
        ref = (gpt2_forward(cfg, P, tokens, prefix) if family == "gpt2" else llama_forward(cfg, P, tokens)).numpy()
        compare_logits(vname, loom_logits(helper, ck, tokens, V, work), ref)

        # export in the source's dtype: the tensors must come back bit for bit, under transformers' full names
        ex = os.path.join(work, vname + "_export")
        dt_flag = {"F32": "f32", "BF16": "bf16", "F16": "f16"}[dtype]
        r = run([loom, "-q", "export", "--ckpt", ck, "--format", "hf", "--out", ex, "--dtype", dt_flag])
        if not check(r.returncode == 0, "%s: loom export --dtype %s" % (vname, dt_flag)):
            continue
        got, files = st_read_dir(ex)
        full = {("transformer." + k if family == "gpt2" and prefix == "" else k): v for k, v in originals.items()}
        check(set(got) == set(full), "%s: exported names are transformers' (%d tensors; missing %s, extra %s)" % (
            vname, len(got), sorted(set(full) - set(got))[:3], sorted(set(got) - set(full))[:3]))
        bad = [k for k in full if k in got and (got[k][0] != dtype or tuple(got[k][1]) != tuple(full[k][2])
                                                or got[k][2] != full[k][3])]
        check(not bad, "%s: exported tensors equal the originals bit for bit (dtype, shape, bytes)%s" % (
            vname, "; differ: %s" % bad[:4] if bad else ""))
        with open(os.path.join(ex, "config.json")) as f:
            ec = json.load(f)
        keys = (["model_type", "vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "layer_norm_epsilon",
                 "activation_function"] if family == "gpt2" else
                ["model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta",
                 "hidden_act", "tie_word_embeddings", "attention_bias", "mlp_bias"])
        diff = [k for k in keys if ec.get(k) != cfg.get(k)]
        if family == "gpt2":
            diff += [] if ec.get("tie_word_embeddings") is True else ["tie_word_embeddings"]
            diff += [] if (ec.get("n_inner") or 4 * cfg["n_embd"]) == (cfg["n_inner"] or 4 * cfg["n_embd"]) else ["n_inner"]
        check(not diff, "%s: exported config.json matches (%s)" % (vname, diff or "all keys"))

        # re-import the export, and a sharded export: the parameters are identical
        base = read_ckpt_sections(os.path.join(ck, "checkpoint.bin"))
        ck2 = os.path.join(work, vname + "_reimport")
        r = run([loom, "-q", "import", "--format", "hf", ex, "--out", ck2])
        same = r.returncode == 0 and read_ckpt_sections(os.path.join(ck2, "checkpoint.bin"))["params"] == base["params"]
        check(same, "%s: re-import of the export is exact (params section identical)" % vname)
        ex2 = os.path.join(work, vname + "_export_sharded")
        r = run([loom, "-q", "export", "--ckpt", os.path.join(ck, "checkpoint.bin"), "--out", ex2, "--dtype", dt_flag,
                 "--max-shard-size", "40000"])
        ok = r.returncode == 0
        if ok:
            got2, files2 = st_read_dir(ex2)
            ok = check(len(files2) > 1 and {k: v[2] for k, v in got2.items()} == {k: v[2] for k, v in got.items()},
                       "%s: sharded export (--max-shard-size 40000): %d shards + index, same tensors" % (vname, len(files2)))
        ck3 = os.path.join(work, vname + "_reimport_sharded")
        r = run([loom, "-q", "import", "--format", "hf", ex2, "--out", ck3])
        check(ok and r.returncode == 0 and read_ckpt_sections(os.path.join(ck3, "checkpoint.bin"))["params"] == base["params"],
              "%s: re-import of the sharded export is exact" % vname)
        # re-export into the same directory as one file: the index and shards are cleaned away
        r = run([loom, "-q", "export", "--ckpt", ck, "--out", ex2, "--dtype", dt_flag])
        left = sorted(os.listdir(ex2))
        check(r.returncode == 0 and left == ["config.json", "model.safetensors"],
              "%s: re-export as one file over a sharded export leaves only %s" % (vname, left))
        if dtype == "F32":
            # and the lower precisions: exactly loom_f32_to_bf16/f16 of the weights (round to nearest even)
            for low in ("BF16", "F16"):
                exl = os.path.join(work, vname + "_export_" + low.lower())
                r = run([loom, "-q", "export", "--ckpt", ck, "--out", exl, "--dtype", low.lower()])
                gl, _ = st_read_dir(exl) if r.returncode == 0 else ({}, None)
                badl = [k for k in full if k not in gl or gl[k][2] != encode(np.frombuffer(full[k][3], "<f4"), low)[0]]
                check(r.returncode == 0 and not badl, "%s: export --dtype %s rounds like torch (%s)" % (
                    vname, low.lower(), badl[:3] or "all tensors"))
        # state section: step 0, AdamW; optimizer sections zero
        st = base["state"]
        step, = struct.unpack("<q", st[:8])
        optim_kind, = struct.unpack("<i", st[48:52])
        check(step == 0 and optim_kind == 0 and base["optim.0"] == bytes(len(base["params"])) and
              base["optim.1"] == base["optim.0"] and set(base) == {"meta", "state", "params", "optim.0", "optim.1"},
              "%s: checkpoint: step 0, AdamW, zero optimizer state" % vname)

    # fine-tuning continues from an imported checkpoint
    vname = variants[0][0]
    ck = os.path.join(work, vname + "_loom")
    ft = os.path.join(work, vname + "_finetune")
    shutil.copytree(ck, ft)
    r = run([loom, "-q", "train", "--config", os.path.join(ft, "train-config.json"), "--resume", "--out", ft,
             "--data", "synthetic", "--steps", "2", "--batch", "2", "--seq-len", "16", "--threads", "2",
             "--peak-gflops", "100"])
    ok = r.returncode == 0
    if ok:
        after = read_ckpt_sections(os.path.join(ft, "checkpoint.bin"))
        step, = struct.unpack("<q", after["state"][:8])
        ok = step == 2 and after["params"] != read_ckpt_sections(os.path.join(ck, "checkpoint.bin"))["params"]
    check(ok, "%s: loom train --resume fine-tunes the imported checkpoint (2 steps)" % vname)
    # and generation samples from it (vocabulary 256: the byte-level tokenizer)
    r = run([loom, "-q", "generate", "--ckpt", ck, "--prompt", "hi", "--max-tokens", "8", "--seed", "1"])
    check(r.returncode == 0 and len(r.stdout) > 2,
          "%s: loom generate --ckpt samples from the imported checkpoint" % vname)
    # in bf16 too (the products on the weights' bf16 copy); any other precision is a usage error
    r = run([loom, "-q", "generate", "--ckpt", ck, "--prompt", "hi", "--max-tokens", "8", "--seed", "1",
             "--precision", "bf16"])
    check(r.returncode == 0 and len(r.stdout) > 2, "%s: loom generate --precision bf16 samples" % vname)
    r = run([loom, "-q", "generate", "--ckpt", ck, "--precision", "fp8"], expect_ok=False)
    check(r.returncode == 2 and "--precision is fp32 or bf16" in r.stderr,
          "%s: loom generate --precision fp8 is a usage error (exit 2)" % vname)


# ------------------------------------------------------------------------------------------------------------
# errors


def errors(loom, work):
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    rng = np.random.default_rng(7)
    cfg, W = gpt2_model(rng)
    tensors = [(n, "F32", a.shape, a.astype("<f4").tobytes()) for n, a in W]
    good = os.path.join(work, "good")
    write_model_dir(good, cfg, tensors)
    gbytes = open(os.path.join(good, "model.safetensors"), "rb").read()
    (hlen,) = struct.unpack("<Q", gbytes[:8])
    header = json.loads(gbytes[8:8 + hlen])
    data = gbytes[8 + hlen:]

    def with_header(h, d=data):
        hb = json.dumps(h).encode()
        return struct.pack("<Q", len(hb)) + hb + d

    def case(name, pattern_parts, mutate_file=None, config=None, index=None, files=None, src=None):
        d = os.path.join(work, name)
        if src is None:
            shutil.copytree(good, d)
            if mutate_file is not None:
                with open(os.path.join(d, "model.safetensors"), "wb") as f:
                    f.write(mutate_file)
            if config is not None:
                with open(os.path.join(d, "config.json"), "w") as f:
                    json.dump(config, f)
            if files:
                os.remove(os.path.join(d, "model.safetensors"))
                for fn, b in files.items():
                    with open(os.path.join(d, fn), "wb") as f:
                        f.write(b)
            if index is not None:
                with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
                    f.write(index if isinstance(index, str) else json.dumps(index))
            src = d
        out = os.path.join(work, name + "_out")
        r = run([loom, "-q", "import", "--format", "hf", src, "--out", out], expect_ok=False)
        lines = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith("[loom")]
        text = lines[0] if lines else ""
        ok = r.returncode == 1 and len(lines) == 1 and all(p in text for p in pattern_parts) and \
            not os.path.exists(os.path.join(out, "checkpoint.bin"))
        check(ok, "error %-22s exit %d, %d line(s): %s" % (name, r.returncode, len(lines), text if ok else r.stderr.strip()))

    st = os.path.join(work, "%s", "model.safetensors")
    case("truncated", [st % "truncated", "transformer.ln_f.bias", "past the end", "truncated"],
         mutate_file=gbytes[:len(gbytes) - 100])
    case("truncated_header", [st % "truncated_header", "header length", "truncated"], mutate_file=gbytes[:hlen // 2])
    case("tiny_file", [st % "tiny_file", "8-byte header length"], mutate_file=b"\x10\x00\x00")
    h = json.loads(json.dumps(header))
    h["transformer.h.0.ln_1.bias"]["data_offsets"][1] += 1 << 40
    case("offsets_beyond_file", [st % "offsets_beyond_file", "transformer.h.0.ln_1.bias", "past the end"],
         mutate_file=with_header(h))
    h = json.loads(json.dumps(header))
    b, e = h["transformer.h.0.ln_1.bias"]["data_offsets"]
    h["transformer.h.0.ln_1.bias"]["data_offsets"] = [b - 8, e - 8]
    case("overlapping_offsets", [st % "overlapping_offsets", "transformer.h.0.ln_1.bias", "overlap"],
         mutate_file=with_header(h))
    h = json.loads(json.dumps(header))
    h["transformer.h.0.ln_1.bias"]["shape"] = [65]
    case("size_lies", [st % "size_lies", "transformer.h.0.ln_1.bias", "needs 260 bytes", "span 256"],
         mutate_file=with_header(h))
    h = json.loads(json.dumps(header))
    h["transformer.wpe.weight"]["dtype"] = "F33"
    case("unknown_dtype", [st % "unknown_dtype", "transformer.wpe.weight", "unknown dtype 'F33'"],
         mutate_file=with_header(h))
    hb = json.dumps(header).encode()[:-1] + b",}"
    case("bad_header_json", [st % "bad_header_json", "header JSON", "line 1 col"],
         mutate_file=struct.pack("<Q", len(hb)) + hb + data)
    # a missing tensor: rewritten without it, so the file itself is valid
    missing = [t for t in tensors if t[0] != "transformer.h.1.mlp.c_fc.weight"]
    case("missing_tensor", [st % "missing_tensor", "no tensor 'transformer.h.1.mlp.c_fc.weight'", "h.1.mlp.fc.weight"],
         mutate_file=st_bytes(missing, {"format": "pt"}))
    wrong = [(n, d, (64, 192), r[:64 * 192 * 4]) if n == "transformer.h.1.mlp.c_fc.weight" else (n, d, s, r)
             for n, d, s, r in tensors]
    case("wrong_shape", [st % "wrong_shape", "transformer.h.1.mlp.c_fc.weight", "[64, 192]", "[64, 256]"],
         mutate_file=st_bytes(wrong, {"format": "pt"}))
    extra = tensors + [("transformer.h.0.attn.rotary.weight", "F32", (4,), bytes(16))]
    case("unknown_tensor", ["'transformer.h.0.attn.rotary.weight'", "does not have"],
         mutate_file=st_bytes(extra, {"format": "pt"}))
    nan = [(n, d, s, (np.frombuffer(r, "<f4").copy() * np.float32("nan")).astype("<f4").tobytes())
           if n == "transformer.ln_f.weight" else (n, d, s, r) for n, d, s, r in tensors]
    case("non_finite", ["transformer.ln_f.weight", "non-finite"], mutate_file=st_bytes(nan, {"format": "pt"}))
    i64 = [(n, "I32", s, r) if n == "transformer.ln_f.bias" else (n, d, s, r) for n, d, s, r in tensors]
    case("int_tensor", ["transformer.ln_f.bias", "I32", "F32, BF16 and F16"], mutate_file=st_bytes(i64, {"format": "pt"}))
    lm = tensors + [("lm_head.weight", "F32", (97, 64), bytes(97 * 64 * 4))]
    case("untied_head", ["lm_head.weight", "differs from the token embedding"], mutate_file=st_bytes(lm, {"format": "pt"}))
    c = dict(cfg, activation_function="relu")
    case("bad_activation", ["config.json", "activation_function 'relu'"], config=c)
    c = dict(cfg)
    del c["n_embd"]
    case("config_missing_key", ["config.json", "n_embd"], config=c)
    c = dict(cfg, model_type="bert")
    case("unknown_model_type", ["config.json", "model_type 'bert'"], config=c)
    lc, _ = llama_model(rng)
    case("llama_attention_bias", ["config.json", "attention_bias"], config=dict(lc, attention_bias=True, mlp_bias=True))
    case("llama_rope_scaling", ["config.json", "rope_scaling ('linear')"],
         config=dict(lc, rope_scaling={"type": "linear", "factor": 2.0}))
    c = dict(cfg, n_embd=96)
    case("config_shape_mismatch", ["transformer.wte.weight", "[97, 64]", "[97, 96]"], config=c)
    # sharded: a shard named by the index is missing; an index that maps a tensor to the wrong shard
    half = len(tensors) // 2
    s1, s2 = st_bytes(tensors[:half], {"format": "pt"}), st_bytes(tensors[half:], {"format": "pt"})
    n1, n2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    wm = {t[0]: (n1 if i < half else n2) for i, t in enumerate(tensors)}
    case("missing_shard", [n2, "cannot open"], files={n1: s1},
         index={"metadata": {"total_size": 0}, "weight_map": wm})
    wm2 = dict(wm)
    wm2[tensors[0][0]] = n2
    case("index_wrong_shard", ["model.safetensors.index.json", tensors[0][0], n2, "does not hold it"],
         files={n1: s1, n2: s2}, index={"weight_map": wm2})
    wm3 = dict(wm)
    wm3[tensors[0][0]] = "../escape.safetensors"
    case("index_path_escape", ["model.safetensors.index.json", "weight_map", "without '/'"],
         files={n1: s1, n2: s2}, index={"weight_map": wm3})
    case("index_bad_json", ["model.safetensors.index.json", "line 1"], files={n1: s1, n2: s2}, index="{\"weight_map\": {")
    wm4 = {k: v for k, v in wm.items() if k != tensors[-1][0]}
    case("index_lacks_tensor", [n2, tensors[-1][0], "not in the index"], files={n1: s1, n2: s2},
         index={"weight_map": wm4})
    case("no_weights", ["holds neither model.safetensors nor model.safetensors.index.json"], files={"x.bin": b""})

    # export: a missing checkpoint, and a directory that is not one
    r = run([loom, "-q", "export", "--ckpt", os.path.join(work, "nope"), "--out", os.path.join(work, "e1")], expect_ok=False)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    check(r.returncode == 1 and len(lines) == 1 and "nope" in lines[0], "export of a missing checkpoint: %s" % r.stderr.strip())
    r = run([loom, "-q", "export", "--ckpt", good, "--out", os.path.join(work, "e2"), "--dtype", "f8"], expect_ok=False)
    check(r.returncode == 2 and "--dtype" in r.stderr, "export --dtype f8 is a usage error: %s" % r.stderr.strip())


def main():
    if len(sys.argv) >= 6 and sys.argv[1] == "roundtrip":
        roundtrip(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    elif len(sys.argv) >= 4 and sys.argv[1] == "errors":
        errors(sys.argv[2], sys.argv[3])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print("%s: %d failed" % (sys.argv[1], len(FAILED)))
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
