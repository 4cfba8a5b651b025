"""Engines that turn batches of uint8 pixels into pooled features with a frozen backbone.

- ``OnnxEngine`` (the CPU default): the backbone is exported to ONNX once per backbone spec and
  weights digest into the cache directory (atomically), checked against PyTorch on a probe batch
  (max abs diff < 1e-4) and run by ONNX Runtime, which is about 3x faster than eager PyTorch on a
  small CPU. Casting, scaling to [0, 1] and normalising are inside the exported graph.
- ``TorchEngine``: eager PyTorch; on CUDA with channels_last and autocast (fp16).
- ``OpenVinoEngine``: OpenVINO from the same cached ONNX export, fp32 (checked like the ONNX
  Runtime engine) or bf16; ``TorchVariantEngine``: torch with channels_last and/or autocast.
- ``create_engine(backbone, "auto")``: the fastest faithful one, measured on this machine by
  :mod:`transferkit.features.select` (the decision is cached).

All take ``[N, H, W, 3]`` uint8 arrays and return ``[N, D]`` float32 arrays.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferkit.core.errors import TransferkitError
from transferkit.core.machine import cpu_threads
from transferkit.core.paths import cache_unusable, describe_os_error

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnxruntime", "openvino")
ONNX_EXPORT_VERSION = 1
ONNX_MAX_ABS_DIFF = 1e-4
# A temporary export file older than this was left by a killed run (an export takes seconds).
STALE_EXPORT_SECONDS = 30 * 60


class EngineError(TransferkitError):
    """An extraction engine cannot be used (unknown name, missing runtime, failed export)."""



def weights_digest(module: nn.Module) -> str:
    """sha256 over a module's parameters and buffers (names, shapes, dtypes, bytes).

    Part of every cache key: two backbones with the same spec but different weights (a fine-tuned
    one, or random ones with another seed) never share cached features or exported graphs.
    """
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class Uint8Features(nn.Module):
    """uint8 NHWC pixels -> pooled features; the graph that gets exported."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x01 = pixels.permute(0, 3, 1, 2).float() / 255.0
        return self.backbone.forward_features(x01)


class TorchEngine:
    """Eager PyTorch; channels_last + autocast on CUDA."""

    name = "torch"

    def __init__(self, backbone: nn.Module, device: str | torch.device | None = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.backbone = backbone.eval().to(self.device)
        if self.device.type == "cuda":
            self.backbone = self.backbone.to(memory_format=torch.channels_last)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, non_blocking=True)
        x01 = x.permute(0, 3, 1, 2).float().div_(255.0)
        with torch.inference_mode():
            if self.device.type == "cuda":
                x01 = x01.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.float16):
                    feats = self.backbone.forward_features(x01)
            else:
                feats = self.backbone.forward_features(x01)
        return feats.float().cpu().numpy()


def synthetic_probe_pixels(spec, n: int = 2) -> np.ndarray:
    # Smooth random images (not white noise) so the probe exercises realistic activations.
    g = np.random.default_rng(1234)
    small = g.integers(0, 256, (n, 8, 8, 3)).astype(np.float32)
    size = spec.image_size
    reps = -(-size // 8)
    big = np.repeat(np.repeat(small, reps, axis=1), reps, axis=2)[:, :size, :size]
    return np.clip(big + g.normal(0, 12, big.shape), 0, 255).astype(np.uint8)


def onnx_model_path(backbone: nn.Module, cache_dir: Path) -> Path:
    from transferkit.features.preprocess import digest

    key = digest(
        {
            "v": ONNX_EXPORT_VERSION,
            "spec": backbone.spec.cache_key_fields(),
            "weights": weights_digest(backbone),
            "torch": torch.__version__.split("+")[0],
        }
    )
    return cache_dir / "onnx" / f"{backbone.spec.name}-{key[:20]}.onnx"


class ExportWriteError(EngineError):
    """An exported graph could not be written to its folder (full disk, not writable, ...)."""

    def __init__(self, folder: Path, cause: OSError) -> None:
        super().__init__(f"cannot write an exported graph to {folder} ({describe_os_error(cause)}); "
                         "free some space or use --engine torch")
        self.folder, self.cause = folder, cause


def remove_stale_exports(folder: Path, max_age_s: float = STALE_EXPORT_SECONDS) -> int:
    """Delete temporary export files (``.*.tmp``) in ``folder`` older than ``max_age_s``, left by killed runs."""
    removed = 0
    cutoff = time.time() - max_age_s
    for tmp in folder.glob(".*.tmp"):
        try:
            if tmp.is_file() and tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                removed += 1
        except OSError:  # another run removed it, or it is not ours to remove
            continue
    if removed:
        log.info("removed %d temporary export files left in %s by interrupted runs", removed, folder)
    return removed


def onnx_export_dir(cache_dir: Path | None) -> tuple[Path, bool]:
    """``(folder, temporary)``: where to keep an exported graph.

    ``<cache_dir>/onnx`` (stale temporary files of killed exports removed), or, with no cache
    (``cache_dir`` is ``None``) or an unusable one (one warning), a new temporary folder that the
    caller deletes once the graph is loaded.
    """
    if cache_dir is not None:
        folder = Path(cache_dir) / "onnx"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            remove_stale_exports(folder)
            return folder, False
        except OSError as exc:
            cache_unusable(cache_dir, exc)
    return Path(tempfile.mkdtemp(prefix="transferkit-onnx-")), True


def _export_to(backbone: nn.Module, file: str) -> None:
    wrapper = Uint8Features(backbone).eval().cpu()
    example = torch.from_numpy(synthetic_probe_pixels(backbone.spec))
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer chatter
        torch.onnx.export(
            wrapper,
            (example,),
            file,
            input_names=["pixels"],
            output_names=["features"],
            dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


def export_onnx(backbone: nn.Module, path: Path) -> Path:
    """Export ``backbone`` (uint8 NHWC in, features out, dynamic batch) to ``path`` atomically.

    Raises:
        ExportWriteError: the folder cannot be written (full disk, read-only, a file in the way).
        EngineError: the export itself failed.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_exports(path.parent)  # what killed exports left, whichever engine exports here
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise ExportWriteError(path.parent, exc) from None
    try:
        _export_to(backbone, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ExportWriteError(path.parent, exc) from None
    except Exception as exc:
        Path(tmp).unlink(missing_ok=True)
        raise EngineError(f"ONNX export of {backbone.spec.name} failed ({type(exc).__name__}: {str(exc)[:200]})") from None
    log.info("exported %s to %s", backbone.spec.name, path)
    return path


class OnnxEngine:
    """ONNX Runtime on the CPU, from a cached export checked against PyTorch."""

    name = "onnxruntime"
    # ORT's memory arena keeps the largest batch's activations: batches of 32 cost about 700 MB for
    # EfficientNet-Lite0, batches of 16 half that, at the same images/s on a CPU.
    max_batch = 16

    def __init__(self, backbone: nn.Module, cache_dir: Path | None, *, threads: int | None = None) -> None:
        """``cache_dir``: where exported graphs are kept; ``None`` (no cache): a temporary folder, deleted once loaded."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise EngineError("onnxruntime is not installed (pip install onnxruntime); or use --engine torch") from None
        folder, temporary = onnx_export_dir(cache_dir)
        self._temp_dir = folder if temporary else None
        self._cache_dir = cache_dir
        self.path = folder / onnx_model_path(backbone, Path()).name
        try:
            self._prepare(ort, backbone, threads)
        finally:
            if self._temp_dir is not None:  # the session holds the graph now
                shutil.rmtree(self._temp_dir, ignore_errors=True)

    def _export(self, backbone: nn.Module) -> None:
        try:
            export_onnx(backbone, self.path)
        except ExportWriteError as exc:
            if self._temp_dir is not None:
                raise
            # The cache cannot take the graph (full disk, read-only): use it from a temporary folder.
            cache_unusable(self._cache_dir, exc.cause)
            self._temp_dir = Path(tempfile.mkdtemp(prefix="transferkit-onnx-"))
            self.path = self._temp_dir / self.path.name
            export_onnx(backbone, self.path)

    def _prepare(self, ort, backbone: nn.Module, threads: int | None) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or cpu_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Decoding runs on the same cores between batches: idle ORT threads must not spin.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        fresh = not self.path.is_file()
        if fresh:
            self._export(backbone)
        try:
            self._open_and_check(ort, opts, backbone)
        except Exception as exc:
            if fresh:  # a graph exported just now is wrong: never leave it for the next run
                self.path.unlink(missing_ok=True)
                raise
            # A corrupt or stale cached graph: export again once, then it must pass.
            log.warning("cached ONNX model %s unusable (%s); exporting again", self.path, exc)
            self._export(backbone)
            try:
                self._open_and_check(ort, opts, backbone)
            except Exception:
                self.path.unlink(missing_ok=True)
                raise

    def _open_and_check(self, ort, opts, backbone: nn.Module) -> None:
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise EngineError(f"ONNX Runtime cannot load {self.path} ({type(exc).__name__}: {str(exc)[:200]})") from None
        self.max_abs_diff = self._check_against_torch(backbone)

    def _check_against_torch(self, backbone: nn.Module) -> float:
        pixels = synthetic_probe_pixels(backbone.spec)
        expected = TorchEngine(backbone, "cpu")(pixels)
        got = self(pixels)
        diff = float(np.abs(expected - got).max()) if got.shape == expected.shape else float("inf")
        if not diff < ONNX_MAX_ABS_DIFF:
            raise EngineError(f"ONNX Runtime output differs from PyTorch by {diff:.2e} (limit {ONNX_MAX_ABS_DIFF:g})")
        log.info("onnxruntime matches torch on a probe batch (max abs diff %.1e)", diff)
        return diff

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        if len(pixels) <= self.max_batch:
            return self.session.run(None, {"pixels": pixels})[0]
        return np.concatenate(
            [self.session.run(None, {"pixels": pixels[i : i + self.max_batch]})[0] for i in range(0, len(pixels), self.max_batch)]
        )


# --- Engines for measured selection: OpenVINO (fp32 / bf16) and torch CPU/CUDA variants ---------
# (``transferkit.features.select`` measures these and picks the fastest faithful one.)

PRECISIONS = ("fp32", "auto", "bf16", "fp16")
"""What a caller allows: ``fp32`` only; ``auto`` (reduced precision only where the selection's
stricter check passes); ``bf16`` / ``fp16`` (reduced precision asked for knowingly)."""

REDUCED_SANITY_MIN_COSINE = 0.98
"""A reduced-precision graph below this cosine to PyTorch on the probe batch is a wrong graph."""


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return precision


def engine_precision(engine) -> str:
    """The numeric precision an engine object computes in (``fp32`` unless it says otherwise)."""
    precision = getattr(engine, "precision", None)
    if precision:
        return str(precision)
    if isinstance(engine, TorchEngine) and engine.device.type == "cuda":
        return "fp16"  # the plain TorchEngine autocasts to fp16 on CUDA
    return "fp32"


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    denom = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return np.where(denom > 0, (a64 * b64).sum(1) / np.maximum(denom, 1e-300), 1.0)


class TorchVariantEngine(TorchEngine):
    """Eager PyTorch with an explicit memory format and autocast dtype (CPU or CUDA).

    ``channels_last`` alone is fp32 (about 1.7x eager on an AVX-512 CPU); ``autocast="bf16"`` on
    the CPU uses bf16 matrix units where the CPU has them (AMX / AVX512-BF16).
    """

    def __init__(self, backbone: nn.Module, device: str | torch.device | None = "cpu", *, channels_last: bool = True,
                 autocast: str | None = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.channels_last = channels_last
        self.autocast_dtype = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}[autocast]
        self.precision = autocast or "fp32"
        base = "torch-cuda" if self.device.type == "cuda" else "torch"
        self.name = base + ("-channels-last" if channels_last and self.device.type != "cuda" else "") + (f"-{autocast}" if autocast else "")
        # A copy: moving or re-laying-out the caller's module in place would change it for the
        # other engines (and for the caller).
        self.backbone = copy.deepcopy(backbone).eval().to(self.device)
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, non_blocking=True)
        x01 = x.permute(0, 3, 1, 2).float().div_(255.0)
        if self.channels_last:
            x01 = x01.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.autocast_dtype is not None:
                with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                    feats = self.backbone.forward_features(x01)
            else:
                feats = self.backbone.forward_features(x01)
        return feats.float().cpu().numpy()


class OpenVinoEngine:
    """OpenVINO on the CPU, compiled from the same cached ONNX export :class:`OnnxEngine` runs.

    ``precision="fp32"`` pins ``INFERENCE_PRECISION_HINT`` to f32 (OpenVINO's own default on a CPU
    with AMX or AVX512-BF16 is bf16) and is checked against PyTorch like the ONNX Runtime engine
    (max abs diff < ``ONNX_MAX_ABS_DIFF``); ``precision="bf16"`` runs in bfloat16 and gets only a
    sanity check (cosine >= ``REDUCED_SANITY_MIN_COSINE``): whether it is faithful enough is the
    selection's call. A batch is split over the compiled model's parallel infer requests
    (throughput streams), which measured about 1.1x one request on 2 cores. Compiled blobs are
    cached next to the ONNX graph.
    """

    max_batch = 64

    def __init__(self, backbone: nn.Module, cache_dir: Path | None, *, precision: str = "fp32", threads: int | None = None) -> None:
        """``cache_dir``: where the ONNX export and compiled blobs are kept; ``None`` (no cache): a
        temporary folder, deleted once the model is compiled."""
        try:
            import openvino as ov
        except ImportError:
            raise EngineError("openvino is not installed (pip install openvino); or use --engine onnxruntime") from None
        if precision not in ("fp32", "bf16"):
            raise EngineError(f"the OpenVINO engine runs fp32 or bf16, not {precision}")
        self._ov = ov
        self.precision = precision
        self.name = "openvino" if precision == "fp32" else f"openvino-{precision}"
        self.threads = threads or cpu_threads()
        folder, temporary = onnx_export_dir(cache_dir)  # the same graph file OnnxEngine uses
        self.path = folder / onnx_model_path(backbone, Path()).name
        self._blob_dir = None if temporary else Path(cache_dir) / "openvino"
        try:
            self._prepare(backbone)
        finally:
            if temporary:  # the compiled model holds the graph now
                shutil.rmtree(folder, ignore_errors=True)

    def _prepare(self, backbone: nn.Module) -> None:
        fresh = not self.path.is_file()
        if fresh:
            export_onnx(backbone, self.path)
        try:
            self._compile_and_check(backbone)
        except Exception as exc:
            if fresh:
                self.path.unlink(missing_ok=True)
                raise
            log.warning("cached ONNX model %s unusable for OpenVINO (%s); exporting again", self.path, exc)
            export_onnx(backbone, self.path)
            try:
                self._compile_and_check(backbone)
            except Exception:
                self.path.unlink(missing_ok=True)
                raise

    def _compile_and_check(self, backbone: nn.Module) -> None:
        ov = self._ov
        try:
            core = ov.Core()
            if self._blob_dir is not None:
                try:
                    self._blob_dir.mkdir(parents=True, exist_ok=True)
                    core.set_property({"CACHE_DIR": str(self._blob_dir)})
                except OSError:
                    pass  # compiling without the blob cache only costs time
            config = {
                "INFERENCE_PRECISION_HINT": "f32" if self.precision == "fp32" else "bf16",
                "PERFORMANCE_HINT": "THROUGHPUT",
                "INFERENCE_NUM_THREADS": self.threads,
            }
            self.compiled = core.compile_model(str(self.path), "CPU", config)
            n = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own RuntimeError kinds
            raise EngineError(f"OpenVINO cannot compile {self.path} ({type(exc).__name__}: {str(exc)[:200]})") from None
        self.requests = [self.compiled.create_infer_request() for _ in range(max(1, min(n, self.threads)))]
        pixels = synthetic_probe_pixels(backbone.spec)
        expected = TorchEngine(backbone, "cpu")(pixels)
        got = self(pixels)
        if got.shape != expected.shape:
            raise EngineError(f"OpenVINO output has shape {got.shape}, PyTorch {expected.shape}")
        self.max_abs_diff = float(np.abs(expected - got).max())
        self.min_cosine = float(cosines(expected, got).min())
        if self.precision == "fp32" and not self.max_abs_diff < ONNX_MAX_ABS_DIFF:
            raise EngineError(f"OpenVINO output differs from PyTorch by {self.max_abs_diff:.2e} (limit {ONNX_MAX_ABS_DIFF:g})")
        if self.precision != "fp32" and not self.min_cosine >= REDUCED_SANITY_MIN_COSINE:
            raise EngineError(f"OpenVINO {self.precision} output has cosine {self.min_cosine:.4f} to PyTorch "
                              f"(a wrong graph below {REDUCED_SANITY_MIN_COSINE})")
        log.info("%s matches torch on a probe batch (max abs diff %.1e, min cosine %.6f)", self.name, self.max_abs_diff,
                 self.min_cosine)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        if len(pixels) > self.max_batch:
            return np.concatenate([self(pixels[i : i + self.max_batch]) for i in range(0, len(pixels), self.max_batch)])
        k = min(len(self.requests), len(pixels))
        if k <= 1:
            return self.requests[0].infer({0: pixels})[0].copy()
        bounds = np.linspace(0, len(pixels), k + 1).astype(int)
        for req, a, b in zip(self.requests, bounds[:-1], bounds[1:]):
            req.start_async({0: pixels[a:b]})
        outs = []
        for req in self.requests[:k]:
            req.wait()
            outs.append(req.get_output_tensor(0).data.copy())
        return np.concatenate(outs)


def plan_engine(engine: str, precision: str = "fp32", device: str | None = None) -> tuple[str, str]:
    """(engine name, precision) an explicit engine name and precision give, without building it.

    ``"auto"`` with ``precision != "fp32"`` needs the measured choice, so it is returned as is.

    Raises:
        EngineError: unknown engine or precision, or a combination no engine here computes.
    """
    if engine not in ENGINES:
        raise EngineError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    check_precision(precision)
    reduced = precision in ("bf16", "fp16")
    cuda = (device is not None and str(device).startswith("cuda")) or (device is None and torch.cuda.is_available())
    if engine == "auto":
        return ("auto", "fp32") if precision == "fp32" else ("auto", precision)
    if engine == "onnxruntime":
        if reduced:
            raise EngineError(f"onnxruntime runs fp32 only; for {precision} use --engine openvino or --engine torch")
        return "onnxruntime", "fp32"
    if engine == "openvino":
        if precision == "fp16":
            raise EngineError("the OpenVINO engine runs fp32 or bf16; use --precision bf16")
        return ("openvino-bf16", "bf16") if reduced else ("openvino", "fp32")
    if cuda:
        return ("torch-cuda-fp16", "fp16") if reduced else ("torch-cuda", "fp32")
    if precision == "fp16":
        raise EngineError("the torch CPU engine runs fp32 or bf16; use --precision bf16")
    return ("torch-channels-last-bf16", "bf16") if reduced else ("torch", "fp32")


def build_engine(name: str, backbone: nn.Module, *, cache_dir: Path, device: str | None = None):
    """The engine called ``name`` (a name from :func:`plan_engine` or the selection's table)."""
    cuda_device = device if device is not None and str(device).startswith("cuda") else "cuda"
    builders = {
        "torch": lambda: TorchEngine(backbone, "cpu"),
        "torch-channels-last": lambda: TorchVariantEngine(backbone, "cpu", channels_last=True),
        "torch-channels-last-bf16": lambda: TorchVariantEngine(backbone, "cpu", channels_last=True, autocast="bf16"),
        "torch-cuda": lambda: TorchVariantEngine(backbone, cuda_device, channels_last=True),
        "torch-cuda-fp16": lambda: TorchVariantEngine(backbone, cuda_device, channels_last=True, autocast="fp16"),
        "onnxruntime": lambda: OnnxEngine(backbone, cache_dir),
        "openvino": lambda: OpenVinoEngine(backbone, cache_dir, precision="fp32"),
        "openvino-bf16": lambda: OpenVinoEngine(backbone, cache_dir, precision="bf16"),
    }
    if name not in builders:
        raise EngineError(f"unknown engine {name!r}; use one of {', '.join(builders)}")
    return builders[name]()
