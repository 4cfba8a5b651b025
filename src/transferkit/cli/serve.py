"""`transferkit serve`: an HTTP service and web page over a bundle or an exported .onnx file."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli import output


def serve(
    model: Path = typer.Argument(..., help="a bundle directory or a `transferkit export` .onnx file"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (default: this machine only)"),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    max_bytes: int = typer.Option(20 * 1024 * 1024, "--max-bytes", min=1, help="largest request body, in bytes"),
    max_pixels: int = typer.Option(40_000_000, "--max-pixels", min=1, help="largest image, in pixels (decompression-bomb guard)"),
    max_files: int = typer.Option(16, "--max-files", min=1, help="most images in one request"),
    threads: int = typer.Option(0, "--threads", min=0, help="ONNX Runtime threads (0: all cores)"),
    max_concurrent: int = typer.Option(4, "--max-concurrent", min=1, help="requests decoded and classified at once (the rest queue)"),
) -> None:
    """Serve a model: POST /v1/predict, GET /v1/model, GET /healthz, /docs, and a web page at /."""
    from transferkit.serve import Limits, create_app, load_runtime, run_server
    from transferkit.serve.model import check_address

    check_address(host, port)
    runtime = load_runtime(model, threads=threads or None)
    app = create_app(runtime, Limits(max_bytes=max_bytes, max_pixels=max_pixels, max_files=max_files, max_concurrent=max_concurrent))
    shown = f"[{host}]" if ":" in host else host
    output.info(f"serving {runtime.path} ({len(runtime.class_names)} classes, {runtime.metadata.get('precision')}) "
                f"on http://{shown}:{port}/  (API docs: /docs; Ctrl+C stops)")
    run_server(app, host=host, port=port)
