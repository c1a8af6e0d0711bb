"""Time full training steps of a method at a given size, and optionally the local MI kernels.

    python benchmarks/step.py --method udaiic --size 224 --labeled-batch 4 --unlabeled-batch 10 \
        --steps 5 --device cpu [--compile] [--compare-naive]
    python benchmarks/step.py --recipe recipes/phantom_cps_strong.toml [--set KEY=VALUE ...] \
        --steps 10 --device cpu [--precision bf16]

A step is everything `mireg train` does per iteration: drawing slices from the in-memory store,
batched augmentation, one forward over [x_l, x_u, T(x_u)] (over x_l alone in a supervised step on a
network that computes each sample alone), every regulariser, backward and the optimiser. The
method's settings come from `recipes/acdc_<method>.toml`; the data is the synthetic cohort at 1 mm
(generated and cached on first use). With --recipe, the steps are those of that recipe as it is, its
data, crop, batches and arithmetic included (--set changes keys, as for `mireg train`; --precision
and --compile, when given, override the recipe's). Like `mireg`, it keeps freed host memory mapped
(mireg.host_memory); --system-malloc measures with malloc's defaults instead. Prints one JSON
line per measurement.
With --compare-naive it also times, on random maps of the decoder layers' shapes, mireg's local MI
against the direct formulation (one conv2d per sub-head with the whole map as kernel, as in the
authors' code), forward + backward, and prints both and their ratio.
With --profile it then runs one more step under ``torch.profiler`` and prints where its time went:
the step's wall time, the time the device was busy, and the operators that took the most of it.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mireg.host_memory import keep_freed_memory
from mireg.losses import local_mi_loss
from mireg.progress import Observer
from mireg.recipe import Recipe, load_recipe
from mireg.training.loop import Trainer
from mireg.training.runtime import resolve_device

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _recipe(args: argparse.Namespace, device: torch.device) -> Recipe:
    """The recipe whose steps are timed, on ``device``, in the arithmetic asked for (a recipe's own
    when --recipe is given without --precision and --compile; fp32, not compiled, for --method)."""
    run = [f'train.device="{device}"']
    if args.precision is not None or args.recipe is None:
        run.append(f'train.precision="{args.precision or "fp32"}"')
    if args.compile is not None or args.recipe is None:
        run.append(f"train.compile={str(bool(args.compile)).lower()}")
    if args.recipe is not None:
        return load_recipe(args.recipe, [*args.set, *run])
    canvas = 16 * math.ceil((args.size + 32) / 16)
    overrides = [
        f'data={{name = "phantom", patients = 20, spacing = 1.0, canvas = {canvas}, '
        "labeled_ratio = 0.5, val_patients = 2, test_patients = 2}",
        f"augment.crop={args.size}",
        f"train.labeled_batch={args.labeled_batch}",
        f"train.unlabeled_batch={args.unlabeled_batch}",
    ]
    return load_recipe(RECIPES / f"acdc_{args.method}.toml", [*overrides, *run])


def time_steps(args: argparse.Namespace, device: torch.device, kept: bool) -> dict[str, object]:
    recipe = _recipe(args, device)
    trainer = Trainer(recipe, observer=Observer())
    trainer.setup()
    trainer.state.model.train()
    for _ in range(args.warmup):
        trainer.step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.step()
    _sync(device)
    seconds = (time.perf_counter() - start) / args.steps
    peak = _peak_mb(device)
    profiled = profile_step(trainer, device) if args.profile else None
    train = recipe.train
    # Slices through the step's main forward: x_l, and x_u and T(x_u) where the step runs them.
    images = train.labeled_batch + len(trainer.step.groups) * train.unlabeled_batch
    if args.recipe is not None:
        shape: dict[str, object] = {
            "recipe": str(args.recipe),
            "set": args.set,
            "crop": recipe.augment.crop,
            "labeled_batch": train.labeled_batch,
            "unlabeled_batch": train.unlabeled_batch,
        }
    else:
        shape = {"method": args.method, "size": args.size}
    return {
        **shape,
        "device": str(device),
        "ms_per_step": round(1000 * seconds, 1),
        "images_per_s": round(images / seconds, 1),
        "peak_mem_mb": round(peak, 1),
        "steps": args.steps,
        "precision": train.precision,
        "compile": train.compile,
        "torch_threads": torch.get_num_threads(),
        "keep_freed_memory": kept,
        **({"profile": profiled} if profiled is not None else {}),
    }


def _device_us(event: object) -> float:
    """An operator's own time on the device (µs); the attribute's name changed across torch versions."""
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(event, name):
            return float(getattr(event, name))
    return 0.0


def profile_step(trainer: Trainer, device: torch.device, top: int = 15) -> dict[str, object]:
    """One step under ``torch.profiler``: wall time, the time the device ran kernels and copies, and the
    operators that took the most of it (an operator's own device time: the kernels it launched)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        trainer.step()
        _sync(device)
        wall = time.perf_counter() - start
    events = prof.key_averages()
    on_device = device.type == "cuda"
    key = _device_us if on_device else (lambda e: float(e.self_cpu_time_total))
    # Kernels and copies are events of their own (device_type CUDA) besides the operators that
    # launched them: the busy time sums the former, the ranking lists the latter.
    kernels = [e for e in events if getattr(e, "device_type", None) == DeviceType.CUDA]
    ranked = sorted((e for e in events if e not in kernels), key=key, reverse=True)
    return {
        "profile": "step",
        "wall_ms": round(1000 * wall, 2),
        "device_busy_ms": round(sum(_device_us(e) for e in kernels) / 1000, 2) if kernels else None,
        "kernels": sum(e.count for e in kernels),
        "kernel_launches": sum(e.count for e in events if e.key.startswith("cudaLaunchKernel")),
        "top": [
            {
                "op": e.key[:80],
                "calls": e.count,
                "self_device_ms": round(_device_us(e) / 1000, 3),
                "self_cpu_ms": round(e.self_cpu_time_total / 1000, 3),
            }
            for e in ranked[:top]
        ],
    }


def _naive_local_mi(z1: torch.Tensor, z2: torch.Tensor, radius: int) -> torch.Tensor:
    """The authors' formulation: one conv2d per sub-head with the whole map as the kernel."""
    losses = []
    for s in range(z1.shape[1]):
        a, b = z1[:, s].transpose(0, 1), z2[:, s].transpose(0, 1)  # (K, N, H, W)
        p = F.conv2d(a, weight=b, padding=radius)  # (K, K, 2r+1, 2r+1)
        p = p - p.min().detach() + 1e-16
        p = p / p.sum(dim=(0, 1), keepdim=True)
        p = (p + p.transpose(0, 1)) / 2
        pi, pj = p.sum(dim=1, keepdim=True), p.sum(dim=0, keepdim=True)
        mi = (p * (torch.log(p + 1e-16) - torch.log(pi + 1e-16) - torch.log(pj + 1e-16))).sum((0, 1))
        losses.append(-mi.mean())
    return torch.stack(losses)


def compare_naive(args: argparse.Namespace, device: torch.device) -> list[dict[str, object]]:
    out = []
    for layer, scale, radius in (("Up_conv3", 2, 1), ("Up_conv2", 1, 3)):
        side = args.size // scale
        shape = (args.unlabeled_batch, 5, 20, side, side)
        z1 = torch.randn(shape, device=device).softmax(2).requires_grad_()
        z2 = torch.randn(shape, device=device).softmax(2).requires_grad_()
        timings = {}
        for name, fn in (("mireg", local_mi_loss), ("naive", _naive_local_mi)):
            fn(z1, z2, radius).sum().backward()  # warm-up
            _sync(device)
            start = time.perf_counter()
            for _ in range(args.kernel_repeats):
                fn(z1, z2, radius).sum().backward()
            _sync(device)
            timings[name] = (time.perf_counter() - start) / args.kernel_repeats
        with torch.no_grad():
            diff = (local_mi_loss(z1, z2, radius) - _naive_local_mi(z1, z2, radius)).abs().max()
        out.append(
            {
                "kernel": "local_mi",
                "layer": layer,
                "shape": list(shape),
                "radius": radius,
                "device": str(device),
                "mireg_ms": round(1000 * timings["mireg"], 1),
                "naive_ms": round(1000 * timings["naive"], 1),
                "speedup": round(timings["naive"] / timings["mireg"], 2),
                "max_abs_diff": float(diff),
            }
        )
    mireg_ms = round(sum(r["mireg_ms"] for r in out), 1)
    naive_ms = round(sum(r["naive_ms"] for r in out), 1)
    out.append(
        {
            "kernel": "local_mi",
            "layer": "all",
            "device": str(device),
            "mireg_ms": mireg_ms,
            "naive_ms": naive_ms,
            "speedup": round(naive_ms / mireg_ms, 2),
        }
    )
    return out


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse options that would be ignored; fill in the --method defaults."""
    shaped = {"--size": args.size, "--labeled-batch": args.labeled_batch}
    shaped["--unlabeled-batch"] = args.unlabeled_batch
    if args.recipe is not None:
        given = [name for name, value in shaped.items() if value is not None]
        given += ["--compare-naive"] if args.compare_naive else []
        if given:
            parser.error(f"{', '.join(given)}: not with --recipe, whose shapes are its own (use --set)")
        return
    if args.set:
        parser.error("--set changes a --recipe's keys; with --method use --size and the batch options")
    args.size = 224 if args.size is None else args.size
    args.labeled_batch = 4 if args.labeled_batch is None else args.labeled_batch
    args.unlabeled_batch = 10 if args.unlabeled_batch is None else args.unlabeled_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--method",
        default="udaiic",
        choices=sorted(path.stem.removeprefix("acdc_") for path in RECIPES.glob("acdc_*.toml")),
        help="the method of recipes/acdc_METHOD.toml",
    )
    parser.add_argument(
        "--recipe", type=Path, help="time this recipe's steps as it is (instead of --method at --size)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="with --recipe: change a key"
    )
    parser.add_argument("--size", type=int, help="crop side with --method (default 224)")
    parser.add_argument("--labeled-batch", type=int, help="with --method (default 4)")
    parser.add_argument("--unlabeled-batch", type=int, help="with --method (default 10)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=["fp32", "bf16"], help="default: fp32, or the recipe's")
    parser.add_argument(
        "--compile",
        action="store_const",
        const=True,
        help="torch.compile the network (default: not, or as the recipe says)",
    )
    parser.add_argument("--compare-naive", action="store_true")
    parser.add_argument("--profile", action="store_true", help="profile one more step (torch.profiler)")
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="do not keep freed host memory mapped (malloc's defaults)",
    )
    parser.add_argument("--kernel-repeats", type=int, default=3)
    args = parser.parse_args()
    _check_arguments(parser, args)
    kept = False if args.system_malloc else keep_freed_memory()
    device = resolve_device(args.device, "--device")
    print(json.dumps(time_steps(args, device, kept)), flush=True)
    if args.compare_naive:
        for row in compare_naive(args, device):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
