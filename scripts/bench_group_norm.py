#!/usr/bin/env python
"""Our fused Triton GroupNorm vs PyTorch's at every GN call site of R-50-FPN GN.

For an 800x1216 input (batch 1 and 2, float32 and bfloat16) it lists each GN call
site of Detectron's e2e_mask_rcnn_R-50-FPN_2x_gn (stem, every bottleneck's
2a / 2b / 2c + residual + ReLU, the shortcuts, FPN laterals and outputs, the
4 box-head convs on 1000 RoIs per image at 7x7 and the 4 mask-head convs on 100
RoIs per image at 14x14), times in the same run

  ours     gnconvert.kernels.group_norm.group_norm(x, 32, w, b, residual=r?, relu=?)
  native   F.group_norm alone, and F.group_norm + add_ + relu_ as the eager model runs it

with CUDA events (triton.testing.do_bench: L2 flushed, median), and prints the
achieved bandwidth of ours (bytes it must move: read x [and r], write y) as GB/s
and as a share of the GPU's peak (spec sheet where known, and a measured
device-to-device copy), then the sums over the whole network weighted by how
often each site occurs.  --e2e also times the model's image-level forward
(body + FPN + RPN head) with the kernel and with GNCONVERT_GN_KERNEL=torch.

Without CUDA it still runs: the kernels go through Triton's interpreter on tiny
stand-ins of a few sites, which checks the plumbing only; the figures are
meaningless and the script says so.

    python scripts/bench_group_norm.py [--batch 1 2] [--dtype float32 bfloat16] [--e2e]
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Callable, Iterator, List

import torch
from benchlib import machine_line, timed

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is first imported

import torch.nn.functional as F  # noqa: E402

from gnconvert.kernels.group_norm import group_norm, group_norm_torch  # noqa: E402

GROUPS = 32
SPEC_BANDWIDTH = {  # bytes/s, from the vendors' data sheets
    "H100 80GB HBM3": 3.35e12,  # SXM5
    "H100 PCIe": 2.0e12,
    "H100 NVL": 3.9e12,
    "H200": 4.8e12,
    "A100-SXM4-80GB": 2.039e12,
    "A100-SXM4-40GB": 1.555e12,
    "A100 80GB PCIe": 1.935e12,
    "L40S": 0.864e12,
    "A10G": 0.6e12,
}


@dataclass(frozen=True)
class Site:
    name: str
    shape: tuple  # (N, C, H, W)
    residual: bool
    relu: bool
    count: int  # how many call sites of the network have exactly this shape and kind


def r50_fpn_gn_sites(height: int = 800, width: int = 1216, batch: int = 1,
                     box_rois: int = 1000, mask_rois: int = 100) -> List[Site]:
    """Every GroupNorm of e2e_mask_rcnn_R-50-FPN_2x_gn at one input size (stride on the 3x3, as in Detectron's GN body)."""
    sites = [Site("stem conv1", (batch, 64, height // 2, width // 2), False, True, 1)]
    stages = [("res2", 64, 256, 3, 4), ("res3", 128, 512, 4, 8), ("res4", 256, 1024, 6, 16), ("res5", 512, 2048, 3, 32)]
    in_stride = 4
    for name, inner, out, blocks, stride in stages:
        h, w = height // stride, width // stride
        hi, wi = height // in_stride, width // in_stride  # block 0's 2a runs before the stride-2 3x3
        sites.append(Site(f"{name}_0 2a", (batch, inner, hi, wi), False, True, 1))
        if blocks > 1:
            sites.append(Site(f"{name}_1+ 2a", (batch, inner, h, w), False, True, blocks - 1))
        sites.append(Site(f"{name} 2b", (batch, inner, h, w), False, True, blocks))
        sites.append(Site(f"{name} 2c +res", (batch, out, h, w), True, True, blocks))
        sites.append(Site(f"{name}_0 shortcut", (batch, out, h, w), False, False, 1))
        in_stride = stride
    for level, stride in (("P2", 4), ("P3", 8), ("P4", 16), ("P5", 32)):
        shape = (batch, 256, height // stride, width // stride)
        sites.append(Site(f"fpn {level} lateral+output", shape, False, False, 2))
    sites.append(Site("box head conv", (batch * box_rois, 256, 7, 7), False, True, 4))
    sites.append(Site("mask head conv", (batch * mask_rois, 256, 14, 14), False, True, 4))
    return sites


def tiny_sites() -> List[Site]:
    """Interpreter stand-ins: one of each kind, a few hundred values per group."""
    return [
        Site("stem-like", (1, 64, 10, 12), False, True, 1),
        Site("2c +res-like", (1, 128, 6, 5), True, True, 1),
        Site("fpn-like", (1, 64, 6, 5), False, False, 1),
        Site("box-head-like", (1, 64, 7, 7), False, True, 4),
    ]


def timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """Median milliseconds of fn()."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=25, rep=200, return_mode="median")

    def cpu_time(fn):
        fn()  # warm-up
        return timed(fn, device)[1] * 1e3

    return cpu_time


def measured_copy_bandwidth(device: torch.device) -> float:
    """Bytes/s of a large device-to-device copy (read + write)."""
    if device.type != "cuda":
        return float("nan")
    src = torch.empty(512 * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = timer(device)(lambda: dst.copy_(src))
    return 2 * src.numel() / (ms * 1e-3)


def spec_bandwidth(device: torch.device) -> float:
    if device.type != "cuda":
        return float("nan")
    name = torch.cuda.get_device_name(device)
    for key, bw in SPEC_BANDWIDTH.items():
        if key in name:
            return bw
    return float("nan")


def bench_site(site: Site, dtype: torch.dtype, device: torch.device, time_ms) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)
    n, c = site.shape[:2]
    x = torch.randn(site.shape, generator=g).to(device, dtype)
    r = torch.randn(site.shape, generator=g).to(device, dtype) if site.residual else None
    w = (torch.rand(c, generator=g) + 0.5).to(device, dtype)
    b = torch.randn(c, generator=g).to(device, dtype)

    def native_full():
        y = F.group_norm(x, GROUPS, w, b, 1e-5)
        if r is not None:
            y.add_(r)
        return y.relu_() if site.relu else y

    ours_y = group_norm(x, GROUPS, w, b, 1e-5, r, site.relu)  # also a correctness spot check
    ref = group_norm_torch(x.float(), GROUPS, w.float(), b.float(), 1e-5, None if r is None else r.float(), site.relu)
    max_err = (ours_y.float() - ref).abs().max().item()

    t_ours = time_ms(lambda: group_norm(x, GROUPS, w, b, 1e-5, r, site.relu))
    t_gn = time_ms(lambda: F.group_norm(x, GROUPS, w, b, 1e-5))
    t_full = time_ms(native_full) if (site.residual or site.relu) else t_gn
    moved = x.numel() * x.element_size() * (3 if site.residual else 2)
    return dict(ours=t_ours, gn=t_gn, full=t_full, bytes=moved, max_err=max_err)


def rows(sites, dtype, device, time_ms) -> Iterator[tuple]:
    for site in sites:
        yield site, bench_site(site, dtype, device, time_ms)


def e2e(device: torch.device, dtype: torch.dtype, batch: int, time_ms) -> None:
    """Image-level forward of the model (body + FPN + RPN head) with and without the kernel."""
    from gnconvert.architecture import gn_r50_fpn
    from gnconvert.model import build_network
    from gnconvert.model.norm import set_group_norm_kernel

    net = build_network(gn_r50_fpn()).eval().to(device, dtype)
    images = torch.randn(batch, 3, 800, 1216, device=device, dtype=dtype)
    results = {}
    for choice in ("triton", "torch"):
        set_group_norm_kernel(net, choice == "triton")
        with torch.inference_mode():
            results[choice] = time_ms(lambda: net(images))
    print(f"  end to end (body+FPN+RPN, batch {batch}, {str(dtype)[6:]}): with kernel {results['triton']:.3f} ms, "
          f"PyTorch GN {results['torch']:.3f} ms, speedup {results['torch'] / results['triton']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--e2e", action="store_true", help="also time the model's image-level forward (CUDA only)")
    args = parser.parse_args()

    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    time_ms = timer(device)
    print(machine_line())
    if on_gpu:
        spec, copy = spec_bandwidth(device), measured_copy_bandwidth(device)
        print(f"peak bandwidth: spec {spec / 1e9:.0f} GB/s, measured copy {copy / 1e9:.0f} GB/s")
        peak = spec if spec == spec else copy
    else:
        peak = float("nan")
        print("NO GPU: running the Triton kernels in the interpreter on tiny stand-in shapes.\n"
              "These figures only show that the script runs; performance figures need a CUDA GPU.")

    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        for batch in args.batch if on_gpu else [1]:
            sites = r50_fpn_gn_sites(batch=batch) if on_gpu else tiny_sites()
            print(f"\n== batch {batch}, {dtype_name} ==")
            print(f"{'site':24s} {'shape':>22s} {'x':>2s} {'ours ms':>9s} {'GN ms':>9s} {'GN+ops ms':>9s} "
                  f"{'speedup':>7s} {'GB/s':>7s} {'%peak':>6s} {'max err':>8s}")
            total_ours = total_gn = total_full = 0.0
            for site, m in rows(sites, dtype, device, time_ms):
                gbps = m["bytes"] / (m["ours"] * 1e-3) / 1e9
                print(f"{site.name:24s} {str(site.shape):>22s} {site.count:2d} {m['ours']:9.4f} {m['gn']:9.4f} "
                      f"{m['full']:9.4f} {m['full'] / m['ours']:6.2f}x {gbps:7.0f} {100 * gbps * 1e9 / peak:5.1f}% "
                      f"{m['max_err']:8.1e}")
                total_ours += site.count * m["ours"]
                total_gn += site.count * m["gn"]
                total_full += site.count * m["full"]
            calls = sum(s.count for s in sites)
            print(f"network sum over {calls} GN calls: ours {total_ours:.3f} ms, F.group_norm {total_gn:.3f} ms, "
                  f"F.group_norm + add/relu {total_full:.3f} ms -> speedup {total_full / total_ours:.2f}x "
                  f"(vs GN alone {total_gn / total_ours:.2f}x)")
            if args.e2e and on_gpu:
                e2e(device, dtype, batch, time_ms)
    if not on_gpu:
        print("\nReminder: interpreter timings on the CPU are not performance figures; run on a CUDA GPU.")


if __name__ == "__main__":
    main()
