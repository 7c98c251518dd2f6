#!/usr/bin/env python3
"""Writes the hand-written cluster descriptions in this folder (loom's cluster.json format, read by
src/plan/cluster.c): a100-80gb-8x-ib.json and h100-sxm-8x-ib.json. Every number comes from the vendor
figures in GPUS below and the efficiency rules in this file; README.md gives the sources and says which
numbers are vendor figures and which are assumptions.

    python3 docs/clusters/make_clusters.py [--out DIR]

Cross-host links give one GPU's NIC (one NIC per GPU); the planner multiplies it by the group's ranks on each
host (NCCL's rings use every NIC of the node when a group holds several GPUs of each host). The fp32 compute
entry is true FP32 (CUDA cores): loom's CUDA backend runs fp32 GEMMs in FP32 unless LOOM_CUDA_TF32=1.
"""
import argparse
import json
import math
import os
import re

# ---- vendor figures (per GPU unless said otherwise; README.md cites each) ----
GPUS = {
    "a100-80gb-8x-ib.json": dict(
        name="8x NVIDIA A100 SXM4 80GB per node, NVLink 3 / NVSwitch, 8x HDR 200 Gb/s InfiniBand per node",
        device="NVIDIA A100 SXM4 80GB",
        fp32_tflops=19.5,        # FP32 (CUDA cores); TF32 tensor core dense 156 (312 with sparsity)
        bf16_tflops=312.0,       # dense BF16/FP16 tensor core (624 with sparsity)
        hbm_GBps=2039.0,         # HBM2e
        nvlink_dir_GBps=300.0,   # 600 GB/s total bidirectional per GPU
        nvlink_busbw_GBps=230.0, # NCCL ring bus bandwidth on 8 GPUs as reported (0.77 of the line rate)
        nic_GBps=200 / 8,        # HDR 200 Gb/s, one NIC per GPU
        nvme_drives=4,           # assumption (DGX A100-like node)
    ),
    "h100-sxm-8x-ib.json": dict(
        name="8x NVIDIA H100 SXM5 80GB per node, NVLink 4 / NVSwitch, 8x NDR 400 Gb/s InfiniBand per node",
        device="NVIDIA H100 SXM5 80GB",
        fp32_tflops=66.9,        # FP32 (CUDA cores); TF32 tensor core dense 494.7 (989 with sparsity)
        bf16_tflops=989.4,       # dense BF16/FP16 tensor core (1,979 with sparsity)
        hbm_GBps=3350.0,         # HBM3
        nvlink_dir_GBps=450.0,   # 900 GB/s total bidirectional per GPU
        nvlink_busbw_GBps=370.0, # NCCL ring bus bandwidth on 8 GPUs as reported (0.82 of the line rate)
        nic_GBps=400 / 8,        # NDR 400 Gb/s, one NIC per GPU
        nvme_drives=8,           # assumption (DGX H100-like node)
    ),
}
HOSTS = 128
GPUS_PER_HOST = 8
MEMORY_BYTES = 80 * 10**9        # the datasheet's "80GB" read as decimal GB (below the physical 80 GiB)

# ---- assumptions (efficiency rules; README.md) ----
GEMM_M = (512, 2048, 8192)
GEMM_NK = (1024, 4096, 12288)


def gemm_eff(m, n, k):
    """0.45 when the smallest dim is 512, +0.10 per doubling, 0.75 from 4096 up."""
    return min(0.75, 0.45 + 0.10 * math.log2(min(m, n, k) / 512))


# FlashAttention-2-like: forward 0.50 and backward 0.40 of the dense tensor-core peak at long T, less at short T
ATTN = [(512, 0.60), (1024, 0.75), (2048, 0.875), (4096, 0.95), (8192, 1.00)]
ATTN_FWD, ATTN_BWD = 0.50, 0.40

HBM_EFF = 0.80                    # fraction of the HBM peak a memory-bound kernel achieves
BYTES_PER_ELEMENT = {             # bytes moved per element per pass (fp32)
    "norm": 12, "activation": 12, "elementwise": 12, "embedding": 8, "loss": 12,
    "optimizer": 32,              # per parameter: AdamW reads p, g, m, v and writes p, m, v (28) + the norm's pass (4)
    "copy": 8,
}

NIC_EFF = {16: 0.90, 1024: 0.85}  # NCCL's bus bandwidth / NIC line rate, by group size
LATENCY_US = {                    # [all_reduce, reduce_scatter/all_gather/broadcast, send]
    "intra": (12.0, 10.0, 6.0),
    16: (30.0, 25.0, 10.0),
    1024: (100.0, 100.0, 10.0),
}
DRIVE_READ_GBps, DRIVE_WRITE_GBps = 2.5, 1.5   # per NVMe drive, sustained through a file system


def link(ranks, cross, busbw, lat):
    ar, coll, send = lat
    bw = round(busbw, 2)
    return {"ranks": ranks, "cross_host": cross, "all_reduce": [ar, bw], "reduce_scatter": [coll, bw],
            "all_gather": [coll, bw], "broadcast": [coll, bw], "send": [send, bw]}


def compute_entry(precision, peak_gflops, hbm_GBps):
    gemm = [[m, n, k, t, round(peak_gflops * gemm_eff(m, n, k), 1)]
            for t in (0, 1, 2) for m in GEMM_M for n in GEMM_NK for k in GEMM_NK]
    attn = [[T, round(peak_gflops * ATTN_FWD * f, 1), round(peak_gflops * ATTN_BWD * f, 1)] for T, f in ATTN]
    bytes_per_ns = HBM_EFF * hbm_GBps  # GB/s = bytes/ns
    ns = {k: round(b / bytes_per_ns, 6) for k, b in BYTES_PER_ELEMENT.items()}
    return {"threads": 0, "precision": precision, "gemm": gemm, "attention": attn, "ns_per_element": ns}


def cluster(spec):
    fp32, bf16 = spec["fp32_tflops"] * 1e3, spec["bf16_tflops"] * 1e3
    intra = spec["nvlink_busbw_GBps"]
    links = [link(GPUS_PER_HOST, False, intra, LATENCY_US["intra"])]
    for ranks, eff in NIC_EFF.items():
        links.append(link(ranks, True, min(intra, spec["nic_GBps"] * eff), LATENCY_US[ranks]))
    return {
        "format": "loom-cluster", "version": 1, "name": spec["name"], "source": "vendor", "device": spec["device"],
        "gpu": True, "hosts": HOSTS, "cores_per_host": GPUS_PER_HOST, "memory_per_rank_bytes": MEMORY_BYTES,
        "peak_gflops": {"fp32": fp32, "bf16": bf16, "fp16": bf16},
        "compute": [compute_entry("fp32", fp32, spec["hbm_GBps"]), compute_entry("bf16", bf16, spec["hbm_GBps"])],
        "links": links,
        "disk": {"read_GBps": spec["nvme_drives"] * DRIVE_READ_GBps, "write_GBps": spec["nvme_drives"] * DRIVE_WRITE_GBps},
    }


def dumps(obj):
    text = json.dumps(obj, indent=2)
    # one line per innermost list of numbers ([M, N, K, trans, GFLOP/s], [latency, busbw], ...)
    return re.sub(r"\[\s*([-0-9.eE]+(?:,\s*[-0-9.eE]+)*)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    a = ap.parse_args()
    for fname, spec in GPUS.items():
        path = os.path.join(a.out, fname)
        with open(path, "w") as f:
            f.write(dumps(cluster(spec)))
        print(path)


if __name__ == "__main__":
    main()
