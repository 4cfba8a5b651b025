"""``--engine auto``: the fastest numerically faithful engine on this machine, chosen by measuring.

Each candidate engine (ONNX Runtime fp32, OpenVINO fp32 and, where the CPU has bf16 or AMX units,
bf16, torch eager / channels_last / bf16 autocast; on a GPU torch CUDA fp32 / fp16) is built for the
user's backbone at its input size, run once on a probe batch against fp32 eager PyTorch (the
reference), then timed round-robin (A B C A B C ..., so a load change on a shared machine hits all of
them alike) for a few seconds; the median images/s decides. The decision is cached as JSON under the
cache dir, keyed on CPU model and flags, library versions, threads, device, backbone spec and weights
digest (at fp32 the architecture alone: a fine-tuned copy reuses the decision, and each build is checked
against PyTorch with its own weights) and the precision asked for, so it is measured once per machine and backbone.

Faithfulness rule, on the pooled features of a 16-image probe batch (the real photos that installed
packages ship -- scikit-learn's, matplotlib's, ... -- decoded like any input, plus flipped and rotated
copies, topped up with smooth synthetic images), against fp32 eager PyTorch:

- fp32 engines: max abs diff <= ``FP32_REL_TOL`` x max(1, max |reference|) and cosine >= ``FP32_MIN_COSINE``
  for every image: the same numbers up to float rounding.
- reduced precision (bf16 / fp16): median cosine >= ``REDUCED_MEDIAN_COSINE`` and min cosine >=
  ``REDUCED_MIN_COSINE``; such an engine is only *allowed* when the caller asks for it
  (``precision="bf16"`` / ``"fp16"``), because a bf16 engine that passes this still moved a linear
  probe's test accuracy by a third of a point on one data set.
- ``precision="auto"`` allows a reduced-precision engine only where it passes a stricter check:
  min cosine >= ``AUTO_MIN_COSINE`` and the backbone's own pretrained classifier (a linear probe
  fitted on these very features) gives the same top-1 class on every probe image as from the fp32
  features. Otherwise ``auto`` stays fp32. (A proxy: it sees a handful of photos, not the user's
  data; ``benchmarks/bench_engines.py`` measures what bf16 does to a probe's test accuracy.)

The default is ``precision="fp32"``: the features are those of PyTorch fp32 (and share its cache
key); reduced-precision features are cached under their own key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from transferkit.features import engines as engine_module

log = logging.getLogger(__name__)

SELECT_VERSION = 1
FP32_REL_TOL = 1e-4
FP32_MIN_COSINE = 0.99999
REDUCED_MEDIAN_COSINE = 0.999
REDUCED_MIN_COSINE = 0.99
AUTO_MIN_COSINE = 0.999
PROBE_BATCH = 16
MEASURE_SECONDS = 6.0
MIN_ROUNDS = 3
MAX_ROUNDS = 8
# After the first timed round, candidates this many times slower than the fastest usable one are
# not timed again (they cannot win; their single figure stays in the table).
PRUNE_FACTOR = 2.5

_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
              "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")
_GRAPH_ENGINES = ("onnxruntime", "openvino", "openvino-bf16")


@dataclass
class Candidate:
    """One engine as measured: speed, agreement with fp32 PyTorch, and whether it may be used.

    Attributes:
        name: engine name (``create_engine``/``build_engine`` understand it).
        precision: ``fp32``, ``bf16`` or ``fp16``.
        images_per_s: median of the timed rounds (``None`` if it could not run).
        rounds: how many timed rounds the median is over.
        max_abs_diff: max abs difference of pooled features to fp32 eager PyTorch.
        cosine_median, cosine_min: per-image cosine similarity to the fp32 features.
        top1_agreement: share of probe images whose top-1 class under the backbone's own classifier
            is the same as from the fp32 features (``None`` without a classifier).
        faithful: passes the rule for its precision (module docstring).
        allowed: the precision asked for allows it (reduced precision needs asking, or ``auto``'s check).
        note: why it was skipped, failed or not allowed.
    """

    name: str
    precision: str
    images_per_s: float | None = None
    rounds: int = 0
    max_abs_diff: float | None = None
    cosine_median: float | None = None
    cosine_min: float | None = None
    top1_agreement: float | None = None
    faithful: bool = False
    allowed: bool = False
    note: str = ""


@dataclass
class EngineChoice:
    """The engine ``--engine auto`` uses, and the measurements behind it.

    Attributes:
        name, precision: the chosen engine.
        reason: one sentence: why this one.
        candidates: every candidate measured (the table ``transferkit engines`` prints).
        key: the decision's cache key.
        machine: CPU model, relevant flags, threads, device, library versions.
        precision_asked: the ``precision`` argument.
        cached: True when read from the decision cache instead of measured now.
        seconds: time the measurement took.
    """

    name: str
    precision: str
    reason: str
    candidates: list[Candidate]
    key: str
    machine: dict
    precision_asked: str = "fp32"
    cached: bool = False
    seconds: float = 0.0
    _built: object = field(default=None, repr=False, compare=False)

    @property
    def images_per_s(self) -> dict[str, float | None]:
        return {c.name: c.images_per_s for c in self.candidates}

    def engine(self, backbone, *, cache_dir: Path | None = None, device: str | None = None):
        """The chosen engine for ``backbone`` (the instance measured, when there is one).

        ``cache_dir``: where exported graphs are kept (``None``: a temporary folder).
        """
        if self._built is not None:
            built, self._built = self._built, None  # hand it over once; engines hold big buffers
            return built
        return engine_module.build_engine(self.name, backbone, cache_dir=cache_dir, device=device or self.machine.get("device"))

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_built"}
        d["candidates"] = [asdict(c) for c in self.candidates]
        d["version"] = SELECT_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EngineChoice:
        d = {k: v for k, v in d.items() if k != "version"}
        d["candidates"] = [Candidate(**c) for c in d["candidates"]]
        return cls(**d)


# --- the machine ---------------------------------------------------------------------------------


def cpu_description() -> dict:
    """CPU model name and the SIMD / matrix-unit flags that decide engine speed."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model or platform.processor() or platform.machine(), "flags": sorted(f for f in _CPU_FLAGS if f in flags)}


def has_bf16_units(cpu: dict | None = None) -> bool:
    """The CPU has native bf16 arithmetic (AMX or AVX512-BF16): bf16 candidates are worth measuring."""
    flags = set((cpu or cpu_description())["flags"])
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - not installed, or broken metadata: no version to key on
        return None


def machine_description(device: str) -> dict:
    import torch

    from transferkit.features.engines import cpu_threads

    d = {"cpu": cpu_description(), "threads": cpu_threads(), "device": device,
         "versions": {m: _version(m) for m in ("torch", "onnxruntime", "openvino", "timm")}}
    if device.startswith("cuda"):
        d["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return d


def _importable(module: str) -> bool:
    import importlib

    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


# --- candidates, faithfulness, measurement ---------------------------------------------------------


def candidate_names(device: str, *, precision: str, include_all: bool = False, cpu: dict | None = None) -> list[tuple[str, str]]:
    """(name, precision) of the engines worth measuring here; the fp32 eager reference first."""
    if device.startswith("cuda"):
        names = [("torch-cuda", "fp32"), ("torch-cuda-fp16", "fp16")]
    else:
        names = [("torch", "fp32"), ("torch-channels-last", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32")]
        if has_bf16_units(cpu):
            names += [("torch-channels-last-bf16", "bf16"), ("openvino-bf16", "bf16")]
    if precision == "fp32" and not include_all:
        names = [n for n in names if n[1] == "fp32"]
    return names


def probe_pixels(spec, n: int = PROBE_BATCH) -> np.ndarray:
    """``[n, S, S, 3]`` uint8: sample photos (and flipped / rotated copies) first, synthetic images after."""
    from transferkit.data.samples import sample_photos
    from transferkit.features.engines import synthetic_probe_pixels
    from transferkit.features.preprocess import decode_uint8

    photos: list[np.ndarray] = []
    for path in sample_photos().values():
        try:
            px = decode_uint8(path, spec)
        except Exception as exc:  # noqa: BLE001 - an unreadable sample only means fewer real photos
            log.debug("sample photo %s not used for the engine probe: %s", path, exc)
            continue
        if px.shape == (spec.image_size, spec.image_size, 3):
            photos.append(px)
    # Every photo first, then their mirror images, then rotated copies.
    views = [lambda x: x, lambda x: x[:, ::-1], np.rot90, lambda x: np.rot90(x, 3)]
    images = [np.ascontiguousarray(view(px)) for view in views for px in photos][:n]
    if len(images) < n:
        images += list(synthetic_probe_pixels(spec, n - len(images)))
    return np.stack(images)


def _top1(backbone, feats: np.ndarray) -> np.ndarray | None:
    import torch

    net = getattr(backbone, "net", None)
    if net is None or not int(getattr(net, "num_classes", 0) or 0) or not hasattr(net, "get_classifier"):
        return None
    with torch.inference_mode():
        return net.get_classifier()(torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))).argmax(1).numpy()


def judge(c: Candidate, reference: np.ndarray, got: np.ndarray, *, ref_top1: np.ndarray | None, got_top1: np.ndarray | None,
          precision_asked: str) -> Candidate:
    """Fill ``c``'s faithfulness numbers and verdicts (the rule in the module docstring)."""
    from transferkit.features.engines import cosines

    if got.shape != reference.shape or not np.isfinite(got).all():
        c.faithful, c.allowed, c.note = False, False, f"output shape {got.shape} or non-finite values"
        return c
    cos = cosines(reference, got)
    c.max_abs_diff = float(np.abs(reference - got).max())
    c.cosine_median, c.cosine_min = float(np.median(cos)), float(cos.min())
    c.top1_agreement = float((ref_top1 == got_top1).mean()) if ref_top1 is not None and got_top1 is not None else None
    if c.precision == "fp32":
        tol = FP32_REL_TOL * max(1.0, float(np.abs(reference).max()))
        c.faithful = c.max_abs_diff <= tol and c.cosine_min >= FP32_MIN_COSINE
        c.allowed = True
        if not c.faithful:
            c.note = f"differs from fp32 torch (max abs diff {c.max_abs_diff:.2e} > {tol:.1e} or min cosine {c.cosine_min:.6f})"
        return c
    c.faithful = c.cosine_median >= REDUCED_MEDIAN_COSINE and c.cosine_min >= REDUCED_MIN_COSINE
    if not c.faithful:
        c.note = f"{c.precision} too far from fp32 (cosine median {c.cosine_median:.5f}, min {c.cosine_min:.5f})"
        c.allowed = False
    elif precision_asked in ("bf16", "fp16"):
        c.allowed = True
    elif precision_asked == "auto":
        c.allowed = c.cosine_min >= AUTO_MIN_COSINE and c.top1_agreement == 1.0
        if not c.allowed:
            c.note = (f"reduced precision not safe enough for precision=auto (min cosine {c.cosine_min:.5f}, "
                      f"top-1 agreement {c.top1_agreement}); ask --precision {c.precision}")
    else:
        c.allowed = False
        c.note = f"reduced precision; only with --precision {c.precision}"
    return c


def _measure(engines: dict, pixels: np.ndarray, candidates: dict[str, Candidate], budget_s: float) -> None:
    """Round-robin timing; fills ``images_per_s`` (median) and ``rounds``."""
    rates: dict[str, list[float]] = {n: [] for n in engines}
    active = list(engines)
    t0 = time.perf_counter()
    for r in range(MAX_ROUNDS):
        for name in active:
            t = time.perf_counter()
            engines[name](pixels)
            rates[name].append(len(pixels) / max(time.perf_counter() - t, 1e-9))
        if r == 0:
            usable = [rates[n][0] for n in active if candidates[n].faithful and candidates[n].allowed]
            if usable:
                active = [n for n in active if rates[n][0] * PRUNE_FACTOR >= max(usable)]
        if r + 1 >= MIN_ROUNDS and time.perf_counter() - t0 >= budget_s:
            break
    for name, values in rates.items():
        candidates[name].images_per_s = round(statistics.median(values), 1)
        candidates[name].rounds = len(values)


def _reason(chosen: Candidate, candidates: list[Candidate], precision_asked: str) -> str:
    others = [c for c in candidates if c is not chosen and c.images_per_s]
    fp32_graph = next((c for c in candidates if c.name == "onnxruntime" and c.images_per_s), None)
    parts = [(f"{chosen.name} ({chosen.precision}) is the fastest faithful engine allowed at precision={precision_asked}: "
              f"{chosen.images_per_s} img/s")]
    if fp32_graph is not None and fp32_graph is not chosen:
        parts.append(f", {chosen.images_per_s / fp32_graph.images_per_s:.2f}x onnxruntime")
    if chosen.max_abs_diff is not None:
        parts.append(f", max abs diff {chosen.max_abs_diff:.1e}, min cosine {chosen.cosine_min:.6f}")
    faster = [c for c in others if (c.images_per_s or 0) > (chosen.images_per_s or 0)]
    if faster:
        parts.append("; faster but not used: " + "; ".join(f"{c.name} {c.images_per_s} img/s ({c.note or 'not allowed'})" for c in faster))
    return "".join(parts)


def decision_key(backbone, *, precision: str, device: str, machine: dict, probe: np.ndarray) -> str:
    from transferkit.features.engines import weights_digest
    from transferkit.features.preprocess import digest

    # At fp32 the decision is about speed, which the architecture sets, not the weights, so a fine-tuned
    # copy of a backbone reuses its decision: the graph engines (ONNX Runtime, OpenVINO) check every
    # build against PyTorch with the weights it runs, and the torch variants are PyTorch's own fp32
    # (channels_last) computation. Reduced precision is judged on the weights.
    weights = "any: each fp32 build is checked against PyTorch" if precision == "fp32" else weights_digest(backbone)
    return digest({"v": SELECT_VERSION, "machine": machine, "spec": backbone.spec.cache_key_fields(),
                   "weights": weights, "precision": precision,
                   "probe": hashlib.sha256(probe.tobytes()).hexdigest(),
                   "rules": [FP32_REL_TOL, FP32_MIN_COSINE, REDUCED_MEDIAN_COSINE, REDUCED_MIN_COSINE, AUTO_MIN_COSINE]})


def decision_path(cache_dir: Path, backbone, key: str) -> Path:
    return Path(cache_dir) / "engines" / f"{backbone.spec.name}-{key[:20]}.json"


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _resolve_device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def choose_engine(model, *, precision: str = "fp32", device: str | None = None, cache_dir: Path | None = None,
                  refresh: bool = False, include_all: bool = False, budget_s: float = MEASURE_SECONDS) -> EngineChoice:
    """Measure the candidate engines on ``model`` (once per machine) and pick the fastest faithful one.

    Args:
        model: a frozen :class:`~transferkit.backbones.model.PixelModel`.
        precision: ``"fp32"`` (default: only engines that reproduce fp32 PyTorch), ``"auto"``
            (reduced precision only where the stricter check passes) or ``"bf16"`` / ``"fp16"``
            (reduced precision allowed; the user asked knowingly).
        device: ``"cpu"``, ``"cuda[:n]"`` or ``None`` (CUDA when available).
        cache_dir: where decisions and exported graphs are cached; ``None``: nothing is cached
            (measured on every call; graphs exported to a temporary folder).
        refresh: measure again even if a decision is cached.
        include_all: also measure engines the precision does not allow (for the table).
        budget_s: seconds of timed rounds (at least ``MIN_ROUNDS`` rounds are run).

    Returns:
        :class:`EngineChoice`; its ``engine(model)`` is the engine to run.

    Raises:
        EngineError: unknown precision, or no candidate could run at all.
    """
    from transferkit.features.engines import (
        TorchEngine,
        check_precision,
    )

    check_precision(precision)
    model.eval()
    device = _resolve_device(device)
    cache_dir = Path(cache_dir) if cache_dir is not None else None
    machine = machine_description(device)
    pixels = probe_pixels(model.spec, PROBE_BATCH)
    key = decision_key(model, precision=precision, device=device, machine=machine, probe=pixels)
    wanted = candidate_names(device, precision=precision, include_all=include_all, cpu=machine["cpu"])
    path = decision_path(cache_dir, model, key) if cache_dir is not None else None
    if not refresh and path is not None and path.is_file():
        try:
            choice = EngineChoice.from_dict(json.loads(path.read_text(encoding="utf-8")))
            choice.cached = True
            # A decision measured with include_all serves everyone; one without it cannot fill the full table.
            if {n for n, _ in wanted} <= {c.name for c in choice.candidates}:
                log.info("engine (cached decision %s): %s", path.name, choice.reason)
                return choice
            log.info("cached engine decision %s did not measure every engine; measuring all", path.name)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("engine decision %s unreadable (%s); measuring again", path, exc)

    t0 = time.perf_counter()
    candidates: dict[str, Candidate] = {}
    engines: dict = {}
    reference = ref_top1 = None
    stable = True  # a decision made while an engine failed for a passing reason is not cached
    for name, prec in wanted:
        c = candidates[name] = Candidate(name, prec)
        module = "openvino" if name.startswith("openvino") else "onnxruntime" if name == "onnxruntime" else None
        if module is not None and not _importable(module):
            c.note = f"not installed (pip install {module})"
            continue
        try:
            engine = engine_module.build_engine(name, model, cache_dir=cache_dir, device=device)
            got = np.asarray(engine(pixels), dtype=np.float32)  # also the warm-up run
        except Exception as exc:  # noqa: BLE001 - any engine that cannot run here is a rejected candidate
            c.note = f"failed: {type(exc).__name__}: {str(exc)[:160]}"
            stable = False
            log.info("engine candidate %s failed: %s", name, c.note)
            continue
        if reference is None:
            if not (name in ("torch", "torch-cuda") and isinstance(engine, TorchEngine)):
                raise engine_module.EngineError(f"the fp32 reference engine could not run ({c.note})")
            reference, ref_top1 = got, _top1(model, got)
        judge(c, reference, got, ref_top1=ref_top1, got_top1=_top1(model, got), precision_asked=precision)
        engines[name] = engine
    if reference is None:
        raise engine_module.EngineError("no engine could run: " + "; ".join(f"{c.name}: {c.note}" for c in candidates.values()))
    _measure(engines, pixels, candidates, budget_s)

    usable = [c for c in candidates.values() if c.faithful and c.allowed and c.images_per_s]
    chosen = max(usable, key=lambda c: c.images_per_s)
    reason = _reason(chosen, list(candidates.values()), precision)
    failed = [c for c in candidates.values() if c.name in _GRAPH_ENGINES and c.note.startswith(("failed", "differs"))]
    if chosen.name.startswith("torch") and failed and device == "cpu":
        msg = "falling back to the PyTorch engine: " + "; ".join(f"{c.name} {c.note}" for c in failed)
        log.warning(msg)
    choice = EngineChoice(chosen.name, chosen.precision, reason, list(candidates.values()), key, machine,
                          precision_asked=precision, seconds=round(time.perf_counter() - t0, 2))
    choice._built = engines.pop(chosen.name)
    engines.clear()
    if stable and path is not None:
        try:
            _write_json(path, choice.to_dict())
        except OSError as exc:
            log.warning("cannot cache the engine decision in %s (%s)", path, exc)
    log.info("engine: %s (measured in %.1f s)", reason, choice.seconds)
    return choice


def create_engine(backbone, engine: str = "auto", *, cache_dir: Path | None = None, device: str | None = None,
                  precision: str = "fp32"):
    """The engine to extract features with.

    Args:
        backbone: a PixelModel (frozen; put in eval mode).
        engine: ``"auto"`` (the fastest faithful engine measured on this machine, see
            :func:`choose_engine`; the decision is cached),
            ``"torch"``, ``"onnxruntime"`` or ``"openvino"``.
        cache_dir: where exported graphs and engine decisions are kept; ``None`` (no cache):
            nothing is written under the cache, graphs are exported to a temporary folder.
        device: torch device for the torch engines (default: CUDA when available).
        precision: ``"fp32"`` (default), ``"auto"`` or ``"bf16"`` / ``"fp16"`` (reduced precision,
            asked for knowingly; its features are cached under their own key).

    Raises:
        engine_module.EngineError: unknown engine or precision, or the engine asked for is unusable.
    """
    name, _ = engine_module.plan_engine(engine, precision, device)
    backbone.eval()
    cache_dir = Path(cache_dir) if cache_dir is not None else None  # None: --no-cache, write nothing there
    if engine == "auto":
        choice = choose_engine(backbone, precision=precision, device=device, cache_dir=cache_dir)
        try:
            return choice.engine(backbone, cache_dir=cache_dir, device=device)
        except engine_module.EngineError as exc:
            if not choice.cached:
                raise
            log.warning("cached engine decision %s unusable now (%s); measuring again", choice.name, exc)
            again = choose_engine(backbone, precision=precision, device=device, cache_dir=cache_dir, refresh=True)
            return again.engine(backbone, cache_dir=cache_dir, device=device)
    return engine_module.build_engine(name, backbone, cache_dir=cache_dir, device=device)


class EngineOnFirstUse:
    """:func:`create_engine`'s engine, built when the first batch needs it: a caller that runs several
    extractions (chunks of a stream, the views of test-time augmentation) builds and loads it once, and
    not at all when every image comes from the feature cache. Callable like an engine."""

    def __init__(self, backbone, engine: str = "auto", *, cache_dir: Path | None = None, device: str | None = None) -> None:
        self._args = (backbone, engine, cache_dir, device)
        self._run = None

    @property
    def name(self) -> str:
        return getattr(self._run, "name", self._args[1])

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if self._run is None:
            backbone, engine, cache_dir, device = self._args
            self._run = create_engine(backbone, engine, cache_dir=cache_dir, device=device)
        return self._run(pixels)
