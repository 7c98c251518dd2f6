#!/usr/bin/python3
"""LoRA against an independent PyTorch reference: 20 AdamW steps of adapters over frozen weights.

Usage: /usr/bin/python3 tests/test_lora.py DUMPFILE   (DUMPFILE from tests/dump_lora.c)

The reference is written here from the LoRA paper and PEFT's conventions, not from loom's code: every adapted
Hugging Face module computes y = x W^T + b + (alpha / r) * (x A^T) B^T with its own A (r x fan_in) and B
(rows x r). GPT-2's c_attn is one module (one adapter over the fused q|k|v rows); LLaMA's q_proj, k_proj,
v_proj, gate_proj and up_proj are separate modules, each with its own adapter over its rows of loom's fused
weights (that placement is what this file checks). The frozen model is tests/torch_ref.py's float64 forward;
its `linear` is wrapped to add the adapters. The loss is the mean cross-entropy over positions with a target
(target -1: masked, as an instruction prompt); torch.optim.AdamW updates A and B (weight decay on both, as
the Hugging Face Trainer decays every weight that is not a bias or a norm).

Tolerances (float32 loom against the float64 reference, compounding over 20 steps of Adam):
  * losses: |d| <= 1e-5 * |ref| at every step. Measured (5 variants): |d| <= 4e-7 on losses ~5, i.e. <= 1e-7
    relative, float32's rounding of the forward; the bound leaves >= 25x for other summation orders. A wrong
    scale, a missing adapter, a transposed B, an adapter on the wrong rows or an ignored mask is off by
    >= 1e-3 relative within a few steps (the scale off by 1% alone: err/tol 3.1 at step 1).
  * bf16 products (precision bf16 in the dump): the frozen products take bf16 operands (8-bit mantissa,
    ~4e-3 relative each) against the float64 reference: |d| <= 2e-2 * |ref|; measured <= 2.4e-3 relative.
  * the adapters after step 20: |d| <= 1e-3 * 20 * lr + 1e-4 * |ref| elementwise in fp32 (0.1% of the
    largest total movement Adam allows; measured err/tol <= 0.004). Not in bf16: there the adapters' gradients
    differ by bf16's rounding of the frozen products, Adam moves each element by ~lr whatever its gradient's
    size, and after 20 steps elements differ by up to ~0.04 of a total movement of at most 0.2: only the
    losses, which those adapters produce, are compared.
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_ref  # noqa: E402  (the float64 frozen model)

torch.set_default_dtype(torch.float64)


def adapter_rows(cfg, name):
    """(fused loom weight name, first row, rows) that the adapter `name` (h.L.<module>) updates."""
    C, H = cfg["d_model"], cfg["n_head"]
    KV = cfg.get("n_kv_head", H)
    hd, F = C // H, cfg["d_ff"]
    layer, module = name.split(".", 2)[1], name.split(".", 2)[2]
    p = "h.%s." % layer
    table = {
        "attn.qkv": ("attn.qkv.weight", 0, None),            # GPT-2 c_attn: all of q|k|v
        "attn.q": ("attn.qkv.weight", 0, H * hd),            # LLaMA q_proj
        "attn.k": ("attn.qkv.weight", H * hd, KV * hd),      # k_proj
        "attn.v": ("attn.qkv.weight", (H + KV) * hd, KV * hd),  # v_proj
        "attn.proj": ("attn.proj.weight", 0, None),          # c_proj / o_proj
        "mlp.fc": ("mlp.fc.weight", 0, None),                # GPT-2 c_fc
        "mlp.gate": ("mlp.gate_up.weight", 0, F),            # gate_proj
        "mlp.up": ("mlp.gate_up.weight", F, F),              # up_proj
        "mlp.proj": ("mlp.proj.weight", 0, None),            # GPT-2 mlp c_proj
        "mlp.down": ("mlp.down.weight", 0, None),            # down_proj
    }
    w, r0, n = table[module]
    return p + w, r0, n


def main():
    recs, _ = torch_ref.read_dump(sys.argv[1])
    cfg = json.loads(recs["config"])
    base = {k[len("param/"):]: torch.from_numpy(v.astype(np.float64)) for k, v in recs.items() if k.startswith("param/")}
    init = {k[len("lora/"):]: v for k, v in recs.items() if k.startswith("lora/")}
    mods = sorted({k[:-len(".lora_A")] for k in init if k.endswith(".lora_A")})
    A = {m: torch.nn.Parameter(torch.from_numpy(init[m + ".lora_A"].astype(np.float64))) for m in mods}
    Bm = {m: torch.nn.Parameter(torch.from_numpy(init[m + ".lora_B"].astype(np.float64))) for m in mods}
    scale = cfg["lora_alpha"] / cfg["lora_r"]
    by_weight = {}
    for m in mods:
        w, r0, n = adapter_rows(cfg, m)
        by_weight.setdefault(w, []).append((m, r0, n))
    assert sum(len(v) for v in by_weight.values()) == len(mods), "an adapter with no home"
    expect = 4 * cfg["n_layer"] if cfg["family"] == "gpt2" else 7 * cfg["n_layer"]
    assert len(mods) == expect, "%d adapters, PEFT's all-linear layout has %d" % (len(mods), expect)

    frozen_linear = torch_ref.linear

    def linear(x, P, wname, bname):
        y = frozen_linear(x, P, wname, bname)
        for m, r0, n in by_weight.get(wname, []):
            delta = scale * ((x @ A[m].t()) @ Bm[m].t())
            if n is None:
                y = y + delta
            else:
                y = torch.cat([y[..., :r0], y[..., r0:r0 + n] + delta, y[..., r0 + n:]], dim=-1)
        return y

    torch_ref.linear = linear
    params = [A[m] for m in mods] + [Bm[m] for m in mods]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"],
                            weight_decay=cfg["weight_decay"])
    bf16 = cfg.get("precision") == "bf16"
    rtol = 2e-2 if bf16 else 1e-5
    if os.environ.get("LORA_TEST_SCALE"):  # a deliberate error, to show the test catches one
        scale *= float(os.environ["LORA_TEST_SCALE"])
    worst, worst_adapters, failed = 0.0, 0.0, 0
    for s in range(cfg["steps"]):
        tokens, targets = recs["step%d/tokens" % s], recs["step%d/targets" % s]
        logits, _ = torch_ref.forward(cfg, base, tokens, np.zeros_like(targets))
        tgt = torch.from_numpy(targets.astype(np.int64))
        keep = tgt >= 0
        logp = torch.log_softmax(logits, dim=-1)
        loss = -(logp.gather(-1, tgt.clamp(min=0)[..., None])[..., 0] * keep).sum() / keep.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        got, ref = float(recs["step%d/loss" % s][0]), float(loss)
        ratio = abs(got - ref) / (rtol * abs(ref))
        worst = max(worst, ratio)
        ok = ratio <= 1
        failed += not ok
        print("step %2d loss loom %.7f torch %.7f  |d| %.2e  err/tol %.4f %s" % (s, got, ref, abs(got - ref), ratio,
                                                                              "PASS" if ok else "FAIL"))
    first, last = float(recs["step0/loss"][0]), float(recs["step%d/loss" % (cfg["steps"] - 1)][0])
    moved = cfg["steps"] * cfg["lr"]
    for m in mods if not bf16 else []:
        for name, p in ((m + ".lora_A", A[m]), (m + ".lora_B", Bm[m])):
            got = recs["final/" + name].astype(np.float64)
            ref = p.detach().numpy()
            tol = 1e-3 * moved + 1e-4 * np.abs(ref)
            r = float(np.max(np.abs(got - ref) / tol))
            worst_adapters = max(worst_adapters, r)
            if r > 1:
                failed += 1
                print("%s after %d steps: err/tol %.3f FAIL" % (name, cfg["steps"], r))
    print("%d steps: %s; worst err/tol losses %.4f, adapters %.4f; loss %.4f -> %.4f (%s, %s)" % (
        cfg["steps"], "PASS" if not failed else "FAIL", worst, worst_adapters, first, last, cfg["family"],
        "masked" if cfg["masked"] else "unmasked"))
    print("%d failed" % failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
