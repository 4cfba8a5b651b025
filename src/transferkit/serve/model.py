"""What ``transferkit serve`` serves: an exported ``.onnx`` file, or a bundle exported on first use."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from transferkit.core.errors import TransferkitError
from transferkit.runtime import Runtime

log = logging.getLogger(__name__)


class ServeError(TransferkitError):
    """The service cannot start (nothing servable at the path, a bad address)."""


def _cache_dir() -> Path:
    from transferkit.features.cache import default_cache_dir

    return Path(default_cache_dir()) / "serve"


def onnx_for(model: str | os.PathLike) -> Path:
    """The ``.onnx`` file to serve for ``model``: the file itself, or a checked fp32 export of a bundle.

    A bundle is exported once into the cache (keyed on the sha256 of its ``bundle.json``) and that
    file is reused while the bundle is unchanged.

    Raises:
        ServeError: ``model`` is neither an ``.onnx`` file nor a bundle folder.
        ExportError, BundleError: the bundle cannot be exported.
    """
    path = Path(model)
    if path.is_file():
        return path  # an exported file: serving it needs no torch
    from transferkit.classifier.export import bundle_sha256, export_model

    if not (path / "bundle.json").is_file():
        raise ServeError(f"{path} is neither an exported .onnx file nor a bundle folder; pass `transferkit train --out` "
                         "output or a `transferkit export` file")
    cached = _cache_dir() / f"{bundle_sha256(path)[:24]}.onnx"
    if not cached.is_file():
        log.info("exporting %s to %s for serving", path, cached)
        export_model(path, cached)
    return cached


def load_runtime(model: str | os.PathLike, *, threads: int | None = None) -> Runtime:
    """A :class:`Runtime` for an ``.onnx`` file or a bundle (exported on first use)."""
    return Runtime(onnx_for(model), threads=threads)


def run_server(app, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``app`` with uvicorn until interrupted (warns when bound beyond this machine)."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: reachable from other machines; there is no authentication", host)
    check_address(host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def check_address(host: str, port: int) -> None:
    """Fail now, with one line, when ``host:port`` cannot be listened on (in use, no such address).

    Raises:
        ServeError: the address cannot be bound.
    """
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(infos[0][4])
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port or --host") from None
