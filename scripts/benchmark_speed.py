# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Speed and memory of the PSM stages on this machine (run it on an otherwise idle machine).

    python -m scripts.benchmark_speed --out docs/results/speed

Measures, with torch's default thread count: one SSL optimiser step per pretext for the CPU profile
(2 images x 4 crops of 256^2 = batch 8) and the paper profile (Res2Net-101, one 512^2 crop); PSM seconds per
1000x1000 image (CPU and paper networks); SCM seconds per 1000x1000 image (jet K=3, stack K=2, colour only);
ResUNet-34 (the det / seg / Ki-67 network): one optimiser step on 2 images x 4 crops of 256^2 and one 1000x1000
image (no TTA), CPU profile (16 base channels, 4 input channels as the seg stage) and paper profile (64). On the CPU
every network runs channels-last (``bundle.networks.memory``); rows marked "(NCHW)" time the old default layout
for comparison, with that helper bypassed. Peak RSS of this process. Medians over --repeats after one warm-up.

``--throughput 1,8,32`` times only the seg network's images / s at those batch sizes (train step and forward;
on CUDA also cuDNN autotuning and bf16 autocast, with peak GPU memory): the GPU-machine command of issue 30,

    python -m scripts.benchmark_speed --device cuda --throughput 1,8,32 --out docs/results/throughput_gpu

``--device cuda`` times the networks on the GPU (synchronised; peak GPU memory recorded) and adds two variants of
the paper-profile step: cuDNN autotuning (``torch.backends.cudnn.benchmark``) and bf16 autocast. SCM stays on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import bundle.networks.res2net
import bundle.networks.resunet
import bundle.nuclei.psm
from bundle.networks import Res2Net, ResUNet34
from bundle.nuclei.psm import PSMInferer, psm_for_image
from bundle.nuclei.scm import hematoxylin_otsu, semantic_clustering
from bundle.nuclei.ssl import PRETEXTS, pretext_loss
from bundle.synthetic import synthetic_he_tile


def timeit(fn, repeats, device="cpu"):
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    fn()
    sync()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


@contextlib.contextmanager
def nchw():
    """Bypass :func:`bundle.networks.memory.cpu_channels_last` (eager networks only): the default NCHW layout."""
    mods = (bundle.networks.res2net, bundle.networks.resunet, bundle.nuclei.psm)
    saved = [m.cpu_channels_last for m in mods]
    for m in mods:
        m.cpu_channels_last = lambda x: x
    try:
        yield
    finally:
        for m, f in zip(mods, saved):
            m.cpu_channels_last = f


def resunet_rows(dev, repeats, paper: bool) -> dict:
    """Seconds per ResUNet-34 optimiser step (8 crops of 256^2) and per 1000x1000 image (eval, no TTA)."""
    out = {}
    layouts = [("", contextlib.nullcontext)] + ([(" (NCHW)", nchw)] if dev.type == "cpu" else [])
    for prof, ch in [("cpu", 16)] + ([("paper", 64)] if paper else []):
        torch.manual_seed(0)
        net = ResUNet34(4, 2, base_channels=ch).to(dev)
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        x = torch.randn(8, 4, 256, 256, device=dev)
        y = torch.randint(0, 2, (8, 256, 256), device=dev)
        img = torch.randn(1, 4, 1000, 1000, device=dev)

        def step():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net.train()(x), y).backward()
            opt.step()

        def infer():
            with torch.no_grad():
                net.eval()(img)

        for label, ctx in layouts:
            with ctx():
                out[f"{prof}/train step{label}"] = timeit(step, repeats, dev)
                out[f"{prof}/1000px image{label}"] = timeit(infer, repeats, dev)
        print(out, flush=True)
    return out


def throughput_rows(dev, repeats, batches, crop: int = 256) -> dict:
    """Images / s of the seg network (ResUNet-34, CPU profile: 16 base channels, RGB + haematoxylin in) for each batch
    size in ``batches``: one Adam step and one no-grad forward of ``batch`` random ``crop``^2 crops; on CUDA also
    with cuDNN autotuning and under bf16 autocast (``amp``), with the peak GPU memory of each. What a GPU's batch
    size and mixed precision are worth (issue 30); on the CPU, fp32 only."""
    out = {}
    variants = [("fp32", None, False)]
    if dev.type == "cuda":
        variants += [("fp32 cudnn.benchmark", None, True), ("bf16 autocast", torch.bfloat16, True)]
    for b in batches:
        torch.manual_seed(0)
        net = ResUNet34(4, 2, base_channels=16).to(dev)
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        x = torch.randn(b, 4, crop, crop, device=dev)
        y = torch.randint(0, 2, (b, crop, crop), device=dev)
        for label, amp, bench in variants:
            torch.backends.cudnn.benchmark = bench
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)

            def step():
                opt.zero_grad()
                with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                    loss = torch.nn.functional.cross_entropy(net.train()(x).float(), y)
                loss.backward()
                opt.step()

            def infer():
                with torch.no_grad(), torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                    net.eval()(x)

            row = {"train_img_s": round(b / timeit(step, repeats, dev), 2),
                   "infer_img_s": round(b / timeit(infer, repeats, dev), 2)}
            if dev.type == "cuda":
                row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated(dev) / 1024**3, 2)
            out[f"batch {b}, {label}"] = row
            print(f"batch {b}, {label}", row, flush=True)
        torch.backends.cudnn.benchmark = False
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--paper", type=int, default=1, help="0: skip the Res2Net-101 rows")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (networks only; SCM runs on the CPU)")
    ap.add_argument("--out", type=Path, default=Path("docs/results/speed"))
    ap.add_argument("--throughput", default="", help="e.g. 1,8,32: only the seg network's images / s at these batch "
                    "sizes (fp32; on CUDA also cudnn.benchmark and bf16 autocast)")
    ap.add_argument("--crop", type=int, default=256, help="crop side for --throughput")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    res = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
                      + (f", {gpu}" if gpu else ""), "device": str(dev), "torch": torch.__version__}
    if a.throughput:
        res["resunet_throughput"] = throughput_rows(dev, a.repeats, [int(b) for b in a.throughput.split(",")], a.crop)
        return finish(res, a)
    res.update({"ssl_step_s": {}, "psm_s_per_1000px_img": {}, "scm_s_per_1000px_img": {}, "resunet_s": {}})
    profiles = [("cpu", "cpu", 32, 8, 256)] + ([("paper", 101, 64, 1, 512)] if a.paper else [])
    for prof, depth, ch, batch, crop in profiles:
        net = Res2Net(depth, base_channels=ch).to(dev)
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        x = torch.rand(max(batch, 2) if prof == "cpu" else batch, 3, crop, crop, device=dev) * 255
        variants = [("", None, False)]
        if prof == "paper" and dev.type == "cuda":
            variants += [(" (cudnn.benchmark)", None, True), (" (bf16 autocast)", torch.bfloat16, False)]
        for name in PRETEXTS if prof == "cpu" else ("similarity",):
            for label, amp, bench in variants:
                def step():
                    opt.zero_grad()
                    with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                        loss = pretext_loss(name, net.train(), x)
                    loss.float().backward()
                    opt.step()
                torch.backends.cudnn.benchmark = bench
                res["ssl_step_s"][f"{prof}/{name}{label}"] = timeit(step, a.repeats, dev)
                print(prof, name + label, res["ssl_step_s"][f"{prof}/{name}{label}"], flush=True)
            torch.backends.cudnn.benchmark = False
            if prof == "cpu" and name == "contrastive" and dev.type == "cpu":
                with nchw():
                    res["ssl_step_s"]["cpu/contrastive (NCHW)"] = timeit(step, a.repeats, dev)
        rgb, _ = synthetic_he_tile(1000, seed=0)
        net.eval()
        for target in ("head", "feature_norm"):
            inf = PSMInferer(stage=1, target=target)
            res["psm_s_per_1000px_img"][f"{prof}/{target}"] = timeit(lambda: psm_for_image(rgb, net, inf, dev),
                                                                     a.repeats, dev)
        inf = PSMInferer(stage=1, sign="none")
        res["psm_s_per_1000px_img"][f"{prof}/head/no-sign"] = timeit(lambda: psm_for_image(rgb, net, inf, dev),
                                                                     a.repeats, dev)
        if dev.type == "cpu":
            with nchw():
                res["psm_s_per_1000px_img"][f"{prof}/head (NCHW)"] = timeit(
                    lambda: psm_for_image(rgb, net, PSMInferer(stage=1), dev), a.repeats, dev)
        print(res["psm_s_per_1000px_img"], flush=True)
    res["resunet_s"] = resunet_rows(dev, a.repeats, bool(a.paper))
    psm = np.random.default_rng(0).random((1000, 1000)).astype(np.float32)
    res["scm_s_per_1000px_img"] = {
        "jet beta=1 K=3 (n_init 10)": timeit(lambda: semantic_clustering(rgb, psm, k=3, beta=1.0), a.repeats),
        "stack PSM+H K=2": timeit(lambda: semantic_clustering(rgb, psm, k=2, fusion="stack", beta=0), a.repeats),
        "colour only K=3": timeit(lambda: semantic_clustering(rgb, None, k=3, beta=float("inf")), a.repeats),
        "H-OD Otsu": timeit(lambda: hematoxylin_otsu(rgb), a.repeats),
    }
    if dev.type == "cuda":
        res["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(dev) / 1024**3
    return finish(res, a)


def finish(res: dict, a) -> dict:
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    res["cmd"] = " ".join(["python", "-m", "scripts.benchmark_speed", *sys.argv[1:]])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
