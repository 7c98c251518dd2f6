#!/usr/bin/python3
"""Issue 3: one evaluator for both implementations of the nanoGPT char recipe.

Loads loom checkpoints (checkpoint.bin of `scripts/reproduce_nanogpt.sh`) into the PyTorch peer's GPT class
(bench/torch_nanogpt_char.py) beside the peer's own ckpt.pt files, and computes each model's loss on the
WHOLE validation split (windows of 64 starting every STRIDE characters), instead of the recipe's 20 random
batches: that separates the models' quality from the noise of the estimate (and checks loom's forward pass
end to end: its weights give the same loss under PyTorch's model).

Usage: bench/nanogpt_crosseval.py [--data FILE] [--stride 16] [--loom CKPT...] [--torch CKPT.pt...]
"""
import argparse
import importlib.util
import json
import os
import statistics
import struct

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser()
ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "tinyshakespeare.txt"))
ap.add_argument("--stride", type=int, default=16)
ap.add_argument("--loom", nargs="*", default=[], help="loom checkpoint.bin files")
ap.add_argument("--torch", nargs="*", default=[], help="the peer's ckpt.pt files")
a = ap.parse_args()
spec = importlib.util.spec_from_file_location("peer", os.path.join(HERE, "torch_nanogpt_char.py"))
peer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(peer)
torch.set_num_threads(2)
text = open(a.data).read()
stoi = {c: i for i, c in enumerate(sorted(set(text)))}  # loom's char ids are the same sorted order
val = torch.tensor([stoi[c] for c in text[int(len(text) * 0.9):]], dtype=torch.long)
T = peer.CFG["block_size"]


def new_model():
    return peer.GPT(dict(peer.CFG, vocab_size=len(stoi)))


def full_val_loss(model):
    model.eval()
    starts = list(range(0, len(val) - T - 1, a.stride))
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(starts), 256):
            s = starts[i:i + 256]
            x = torch.stack([val[j:j + T] for j in s])
            y = torch.stack([val[j + 1:j + T + 1] for j in s])
            _, loss = model(x, y)
            total += loss.item() * len(s)
    return total / len(starts)


def loom_model(path):
    """A loom checkpoint (docs/FORMATS.md: header, 72-byte section entries, sections) into the peer's model."""
    b = open(path, "rb").read()
    assert b[:8] == b"LOOMCKPT", path
    secs = {}
    for i in range(struct.unpack_from("<I", b, 12)[0]):
        off = 24 + 72 * i
        name = b[off:off + 48].split(b"\0")[0].decode()
        o, nb = struct.unpack_from("<QQ", b, off + 48)
        secs[name] = b[o:o + nb]
    meta = json.loads(secs["meta"])
    flat = np.frombuffer(secs["params"], dtype=np.float32)
    info = {p["name"]: p for p in meta["params"]}

    def get(name):
        p = info[name]
        k = int(np.prod(p["shape"]))
        return torch.from_numpy(flat[p["offset"]:p["offset"] + k].copy()).view(*p["shape"])

    m = new_model()
    rename = {"attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj", "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}
    state = {}
    for k, v in m.state_dict().items():
        if k.endswith(".attn.bias"):  # the causal mask buffer
            state[k] = v
            continue
        n = k.replace("transformer.", "")
        if n in ("wte.weight", "lm_head.weight"):
            n = "wte"
        elif n == "wpe.weight":
            n = "wpe"
        for x, y in rename.items():
            n = n.replace(x, y)
        state[k] = get(n)
    m.load_state_dict(state)
    return m


rows = []
for p in a.loom:
    rows.append(("loom", p, full_val_loss(loom_model(p))))
    print(f"loom  {p}: whole-validation loss {rows[-1][2]:.4f}", flush=True)
for p in a.torch:
    m = new_model()
    m.load_state_dict(torch.load(p, map_location="cpu")["model"])
    rows.append(("torch", p, full_val_loss(m)))
    print(f"torch {p}: whole-validation loss {rows[-1][2]:.4f}", flush=True)
for who in ("loom", "torch"):
    v = [r[2] for r in rows if r[0] == who]
    if v:
        print(f"{who} mean over {len(v)}: {statistics.mean(v):.4f}")
