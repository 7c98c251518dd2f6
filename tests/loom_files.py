"""Readers for loom's on-disk formats (docs/FORMATS.md), shared by the Python tests and bench scripts:
the single-file checkpoint container and the prepared dataset's token shards. Written from the format
description, not from loom's C code, so a test that reads with them checks the writer independently."""
import json
import os
import struct

import numpy as np


def read_ckpt_sections(path):
    """A single-file checkpoint (`checkpoint.bin`): section name -> bytes."""
    with open(path, "rb") as f:
        buf = f.read()
    assert buf[:8] == b"LOOMCKPT", "%s: not a loom checkpoint" % path
    version, n = struct.unpack("<II", buf[8:16])
    assert version == 1, "%s: checkpoint version %d" % (path, version)
    out = {}
    for i in range(n):
        e = buf[24 + 72 * i:24 + 72 * (i + 1)]
        name = e[:48].rstrip(b"\0").decode()
        off, size = struct.unpack("<QQ", e[48:64])
        out[name] = buf[off:off + size]
    return out


def read_ckpt_params(path):
    """(meta dict, {loom parameter name: float32 array of its shape}) of a single-file checkpoint."""
    secs = read_ckpt_sections(path)
    meta = json.loads(secs["meta"])
    flat = np.frombuffer(secs["params"], dtype=np.float32)
    params = {}
    for p in meta["params"]:
        k = int(np.prod(p["shape"]))
        params[p["name"]] = flat[p["offset"]:p["offset"] + k].reshape(p["shape"]).copy()
    return meta, params


def read_dataset_split(directory, split):
    """All tokens of one split ("train" or "val") of a prepared dataset, shards in order, as int64."""
    with open(os.path.join(directory, "dataset.json")) as f:
        manifest = json.load(f)
    parts = []
    for s in manifest["shards"]:
        if s["split"] != split:
            continue
        with open(os.path.join(directory, s["file"]), "rb") as f:
            buf = f.read()
        assert buf[:8] == b"LOOMSHRD", "%s: not a token shard" % s["file"]
        width, = struct.unpack_from("<I", buf, 16)
        n, = struct.unpack_from("<Q", buf, 24)
        tokens = np.frombuffer(buf, dtype=np.uint16 if width == 2 else np.uint32, count=n, offset=64)
        parts.append(tokens.astype(np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
