"""The HTTP service: FastAPI over one :class:`~transferkit.runtime.Runtime`, loaded once.

Routes: ``POST /v1/predict`` (multipart, one or several images in fields named ``files`` or
``file``; ``?top_k=``), ``GET /v1/model``, ``GET /healthz``, ``GET /`` (the web page), and FastAPI's
``/openapi.json`` and ``/docs``. Every bad upload gets a 4xx JSON answer ``{"detail": reason,
"code": ...}``: a request body over ``max_bytes`` 413, a file with more than ``max_pixels`` 413,
too many files 413, a part whose content type is not an image 415, a request that is not
multipart 415, an empty, truncated or undecodable file 400. Decoding and inference run in a
thread pool, up to ``max_concurrent`` requests at once, so one slow request never holds up the
others (the ONNX Runtime session is shared: it is thread-safe) and memory stays bounded.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from transferkit.runtime import ImageInputError, ImageTooLargeError, Runtime
from transferkit.runtime.decode import TruncatedImageInputError

log = logging.getLogger(__name__)

IMAGE_TYPES = ("image/", "application/octet-stream")


@dataclass
class Limits:
    """What one request may carry.

    Attributes:
        max_bytes: the whole request body, in bytes (multipart overhead included).
        max_pixels: pixels of one image, before any resizing (decompression-bomb guard).
        max_files: images in one request.
        max_top_k: the largest ``top_k`` a client may ask for.
        max_concurrent: requests decoded and classified at the same time (threads); the others wait
            their turn, so memory stays bounded however many clients connect.
    """

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_files: int = 16
    max_top_k: int = 100
    max_concurrent: int = 4


class UploadRejected(Exception):
    """A request the service refuses: HTTP status, a machine-readable code and the reason."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason = status, code, reason


def _reject(status: int, code: str, reason: str) -> JSONResponse:
    return JSONResponse({"detail": reason, "code": code}, status_code=status)


class BodyLimit:
    """ASGI middleware: a POST body over ``max_bytes`` is answered 413 before the app parses it."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        too_big = _reject(413, "too_many_bytes", f"the request is larger than the limit of {self.max_bytes} bytes")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await too_big(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await too_big(scope, receive, send)
        done = False

        async def replay():
            nonlocal done
            if done:
                return await receive()
            done = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


def model_info(runtime: Runtime, limits: Limits) -> dict[str, Any]:
    """What ``GET /v1/model`` answers: classes, backbone, preprocessing, metrics and limits."""
    meta = runtime.metadata
    backbone = meta.get("backbone", {})
    return {
        "class_names": runtime.class_names,
        "backbone": {k: backbone.get(k) for k in ("name", "timm_name", "weights_source", "weights_sha256")},
        "precision": meta.get("precision"),
        "input": meta.get("input"),
        "preprocessing": meta.get("preprocessing"),
        "metrics": meta.get("metrics", {}),
        "quantization": meta.get("quantization"),
        "check": meta.get("check"),
        "bundle": meta.get("bundle"),
        "toolkit_version": meta.get("toolkit_version"),
        "file": runtime.path.name,
        "limits": asdict(limits),
        **({"members": [m["name"] for m in meta["members"]], "combine": meta.get("combine"), "inputs": meta.get("inputs")}
           if meta.get("members") else {}),
    }


def _uploads(form, limits: Limits) -> list[UploadFile]:
    uploads = [v for key in ("files", "file") for v in form.getlist(key)]
    if any(not isinstance(v, UploadFile) for v in uploads):
        raise UploadRejected(400, "not_a_file", "the fields 'files'/'file' must be file uploads, not text")
    if not uploads:
        raise UploadRejected(400, "no_file", "no image in the request; send multipart/form-data with one or more 'files' fields")
    if len(uploads) > limits.max_files:
        raise UploadRejected(413, "too_many_files", f"{len(uploads)} files in one request; the limit is {limits.max_files}")
    for u in uploads:
        ctype = (u.content_type or "").split(";")[0].strip().lower()
        if ctype and not ctype.startswith(IMAGE_TYPES):
            raise UploadRejected(415, "wrong_content_type", f"{u.filename or 'an upload'} has content type {ctype!r}; send image files")
    return uploads


def _classify(runtime: Runtime, blobs: list[tuple[str, bytes]], top_k: int, workers: threading.BoundedSemaphore) -> list[dict[str, Any]]:
    with workers:  # a pool thread waits here while max_concurrent others decode and classify
        return _classify_now(runtime, blobs, top_k)


def _classify_now(runtime: Runtime, blobs: list[tuple[str, bytes]], top_k: int) -> list[dict[str, Any]]:

    pixels = []
    for name, data in blobs:
        if not data:
            raise UploadRejected(400, "empty_file", f"{name}: empty file (0 bytes)")
        try:
            pixels.append(runtime.preprocess(data))
        except ImageTooLargeError as exc:
            raise UploadRejected(413, "too_many_pixels", f"{name}: {exc}") from None
        except TruncatedImageInputError as exc:
            raise UploadRejected(400, "truncated", f"{name}: {exc}") from None
        except ImageInputError as exc:
            raise UploadRejected(400, "not_an_image", f"{name}: {exc}") from None
    tops = runtime.top(runtime.run(runtime.stack(pixels)), top_k)
    return [{"filename": name, "top": [{"label": c, "probability": p} for c, p in top]} for (name, _), top in zip(blobs, tops)]


async def _predict(request: Request, runtime: Runtime, limits: Limits, workers: threading.BoundedSemaphore) -> JSONResponse:
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise UploadRejected(415, "not_multipart", f"content type {ctype or 'none'!r}; send multipart/form-data with 'files' fields")
    try:
        top_k = int(request.query_params.get("top_k", 3))
    except ValueError:
        raise UploadRejected(400, "bad_top_k", "top_k must be an integer") from None
    if not 1 <= top_k <= limits.max_top_k:
        raise UploadRejected(400, "bad_top_k", f"top_k must be between 1 and {limits.max_top_k}")
    try:
        form = await request.form(max_files=limits.max_files + 1, max_fields=limits.max_files + 16)
    except StarletteHTTPException as exc:
        raise UploadRejected(400, "bad_multipart", f"the multipart body cannot be parsed ({exc.detail})") from None
    try:
        uploads = _uploads(form, limits)
        blobs = [(u.filename or f"file {i}", await u.read()) for i, u in enumerate(uploads)]
    finally:
        await form.close()
    results = await run_in_threadpool(_classify, runtime, blobs, top_k, workers)
    return JSONResponse({"model": runtime.path.name, "results": results})


_PREDICT_DOC = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["files"],
            "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
        }}},
    },
    "parameters": [{"name": "top_k", "in": "query", "required": False, "schema": {"type": "integer", "default": 3, "minimum": 1}}],
}


def create_app(runtime: Runtime, limits: Limits | None = None) -> FastAPI:
    """The FastAPI application serving ``runtime`` (its ``max_pixels`` is set from ``limits``).

    Args:
        runtime: the exported model, loaded once and shared by all requests.
        limits: request limits (default :class:`Limits`).
    """
    from transferkit.serve.page import PAGE_HTML

    limits = limits or Limits()
    runtime.max_pixels = limits.max_pixels
    app = FastAPI(title="transferkit classifier", version=str(runtime.metadata.get("toolkit_version", "")),
                  description=f"Image classifier over {len(runtime.class_names)} classes exported by transferkit.")
    app.add_middleware(BodyLimit, max_bytes=limits.max_bytes)
    workers = threading.BoundedSemaphore(max(1, limits.max_concurrent))

    @app.exception_handler(UploadRejected)
    async def _rejected(_request: Request, exc: UploadRejected) -> JSONResponse:
        log.info("rejected upload (%d %s): %s", exc.status, exc.code, exc.reason)
        return _reject(exc.status, exc.code, exc.reason)

    @app.post("/v1/predict", summary="Classify one or several uploaded images", openapi_extra=_PREDICT_DOC)
    async def predict(request: Request) -> JSONResponse:
        return await _predict(request, runtime, limits, workers)

    @app.get("/v1/model", summary="The model: classes, backbone, preprocessing, metrics, limits")
    async def model() -> dict[str, Any]:
        return model_info(runtime, limits)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE_HTML)

    return app
