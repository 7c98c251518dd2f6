#!/usr/bin/python3
"""Issue 3: one evaluator for both implementations of the nanoGPT char recipe.

Loads loom checkpoints (checkpoint.bin of `scripts/reproduce_nanogpt.sh`) into the PyTorch peer's GPT class
(bench/torch_nanogpt_char.py) beside the peer's own ckpt.pt files, and computes each model's loss on the
WHOLE validation split (windows of 64 starting every STRIDE characters), instead of the recipe's 20 random
batches: that separates the models' quality from the noise of the estimate (and checks loom's forward pass
end to end: its weights give the same loss under PyTorch's model). For each model it also prints the standard
deviation of the recipe's own estimate (eval_iters=20 batches of 12 random windows, 240 windows), from the
spread of the windows' losses: how far one run's reported validation loss strays from the model's true loss.

Usage: bench/nanogpt_crosseval.py [--data FILE] [--stride 16] [--loom CKPT...] [--torch CKPT.pt...]
"""
import argparse
import importlib.util
import os
import statistics

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
    """(whole-split loss, standard deviation of the recipe's estimate of it: eval_iters batches of batch_size)"""
    w = peer.window_losses(model, val, T, a.stride)
    return w.mean().item(), w.std().item() / (peer.CFG["eval_iters"] * peer.CFG["batch_size"]) ** 0.5


def loom_model(path):
    return peer.from_loom_checkpoint(new_model(), path)


rows = []


def score(who, path, model):
    rows.append((who, path) + full_val_loss(model))
    print(f"{who:5s} {path}: whole-validation loss {rows[-1][2]:.4f} (20-batch estimate sd {rows[-1][3]:.4f})",
          flush=True)


for p in a.loom:
    score("loom", p, loom_model(p))
for p in a.torch:
    m = new_model()
    m.load_state_dict(torch.load(p, map_location="cpu")["model"])
    score("torch", p, m)
for who in ("loom", "torch"):
    v = [r[2] for r in rows if r[0] == who]
    if v:
        print(f"{who} mean over {len(v)}: {statistics.mean(v):.4f}")
