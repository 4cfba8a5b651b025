"""The web page in a real browser: Debian's chromium driven by Playwright uploads a photo and reads the label.

Runs `transferkit serve` as a subprocess on a free 127.0.0.1 port. Playwright comes with the test
extra; the browser is the system's (`apt-get install -y chromium`), since Playwright's own browser
download is not possible offline. Without playwright installed the test skips; with playwright but
no chromium it fails and says what to install (CI installs both, so it cannot skip there).
Set TRANSFERKIT_SCREENSHOT=path to keep the screenshot (docs/serve.png was made that way).
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, timeout: float = 90.0) -> subprocess.Popen:
    """`transferkit serve MODEL --port PORT` in a subprocess, returned once /healthz answers."""
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "transferkit.cli.main", "serve", str(model), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"transferkit serve exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"transferkit serve did not answer within {timeout:.0f} s")


def browse(url: str, photo: Path, screenshot: Path) -> dict[str, str]:
    """Open the page, pick ``photo``, read the top label; then drop it and read again; save a screenshot."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 820, "height": 560})
            page.goto(url, timeout=30_000)
            page.wait_for_function("document.getElementById('model').textContent.includes('classes')", timeout=30_000)
            page.set_input_files("#file", str(photo))
            page.wait_for_selector("#bars .row .label", timeout=60_000)
            picked = page.inner_text("#bars .row .label")
            page.evaluate("() => { delete document.body.dataset.top; document.getElementById('bars').replaceChildren(); }")
            data = base64.b64encode(photo.read_bytes()).decode()
            page.evaluate("""([data, name]) => {
                const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
                const dt = new DataTransfer();
                dt.items.add(new File([bytes], name, { type: "image/png" }));
                document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true }));
            }""", [data, photo.name])
            page.wait_for_function("document.body.dataset.top !== undefined", timeout=60_000)
            dropped = page.inner_text("#bars .row .label")
            info = page.inner_text("#model")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"picked": picked, "dropped": dropped, "model": info}


@pytest.fixture
def exported(tmp_path, tiny_backbone) -> Path:
    import torch
    from torch import nn

    from transferkit.classifier.bundle import ClassifierModel, save_bundle
    from transferkit.classifier.export import export_model

    torch.manual_seed(0)
    model = ClassifierModel(tiny_backbone, nn.Linear(tiny_backbone.num_features, 3), ["tabby", "tiger", "lynx"]).eval()
    save_bundle(tmp_path / "bundle", model)
    return export_model(tmp_path / "bundle", tmp_path / "model.onnx").path


def test_the_page_classifies_a_real_photo_in_chromium(exported, chelsea_path, tmp_path):
    pytest.importorskip("playwright", reason="playwright comes with the test extra: pip install -e '.[test]'")
    if not shutil.which("chromium"):
        pytest.fail("the browser test needs Debian's chromium: apt-get install -y chromium (as root)")
    import httpx

    port = _free_port()
    server = start_server(exported, port)
    try:
        url = f"http://127.0.0.1:{port}"
        with chelsea_path.open("rb") as f:
            expected = httpx.post(f"{url}/v1/predict", files={"files": ("chelsea.png", f, "image/png")}, timeout=60).json()
        label = expected["results"][0]["top"][0]["label"]
        shot = Path(os.environ.get("TRANSFERKIT_SCREENSHOT") or tmp_path / "serve.png")
        seen = browse(url + "/", chelsea_path, shot)
        assert seen["picked"] == label and seen["dropped"] == label
        assert "3 classes" in seen["model"]
        assert shot.stat().st_size > 5_000
        assert httpx.get(f"{url}/healthz", timeout=5).json() == {"status": "ok"}
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
