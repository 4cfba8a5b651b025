"""examples/transfer_learning.ipynb runs end to end, offline, and shows what each step promises.

The notebook reads its settings from ``TK_*`` environment variables; here they point it at the
tiny generated image folder (plus one unreadable file, which the probe step must report as not
used) and timm's tiny ``test_efficientnet`` with random weights at 32 px, with ``TK_QUICK=1``
(a few steps and epochs) and ``TK_AUTO=1`` (so the ``mode="auto"`` cell runs too). The kernel is
the ipykernel of the interpreter running the tests and inherits this environment (the isolated
caches of conftest included).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "transfer_learning.ipynb"
# Code cells (by tag) that must display at least one image.
SHOWS_IMAGES = ("classify", "data", "curves", "evaluate", "featuremaps", "dream", "attack")


def _text(cell) -> str:
    """All text a cell printed or returned."""
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
    return "".join(parts)


def _mime_types(cell) -> set[str]:
    return {mime for out in cell.get("outputs", []) for mime in out.get("data", {})}


def _by_tag(nb) -> dict[str, dict]:
    return {tag: cell for cell in nb.cells if cell.cell_type == "code" for tag in cell.metadata.get("tags", [])}


def test_notebook_is_stored_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), "store the notebook without outputs"
    assert set(SHOWS_IMAGES) | {"probe", "finetune", "auto", "save"} <= set(_by_tag(nb))


def test_notebook_runs_offline_and_shows_every_step(tiny_image_folder, tmp_path, monkeypatch):
    (tiny_image_folder / "class_0" / "broken.jpg").write_bytes(b"this is not a JPEG")
    out = tmp_path / "out"
    settings = {"TK_DATA": str(tiny_image_folder), "TK_BACKBONE": "test_efficientnet", "TK_WEIGHTS": "none",
                "TK_IMAGE_SIZE": "32", "TK_QUICK": "1", "TK_AUTO": "1", "TK_OUT": str(out), "TK_SEED": "0"}
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError (with the cell and its traceback) when a cell fails
    seconds = time.perf_counter() - t0

    cells = _by_tag(nb)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    for tag in SHOWS_IMAGES:
        assert "image/png" in _mime_types(cells[tag]), f"the {tag!r} cell displayed no image"

    probe = _text(cells["probe"])
    assert re.search(r"held-out test accuracy: \d+(\.\d)?%", probe), probe
    assert "1 file(s) not used" in probe and "broken.jpg" in probe, probe
    assert "Classifier('test_efficientnet', mode='probe'" in probe and "fitted: 3 classes, test accuracy" in probe
    finetune = _text(cells["finetune"])
    assert "mode='finetune'" in finetune and "strategy cached" in finetune, finetune
    assert "auto chose: probe" in _text(cells["auto"])  # 18 images: too few per class to fine-tune
    assert re.search(r"test accuracy: fine-tuned \d+(\.\d)?%, probe \d+(\.\d)?%", _text(cells["evaluate"]))
    assert _text(cells["dream"]).count("p(tabby") == 2  # with and without TV
    attack = _text(cells["attack"])
    assert "before:" in attack and "after:" in attack and "PSNR" in attack and "SSIM" in attack

    # What it wrote: the evaluation report, a bundle that loads, the attack's PNGs.
    assert (out / "evaluation" / "report.html").is_file() and (out / "evaluation" / "metrics.json").is_file()
    assert (out / "model-finetuned").is_dir()
    assert sorted(p.name for p in (out / "attack").glob("*.png")) == ["chelsea_adv.png", "chelsea_attack.png", "chelsea_perturbation.png"]
    assert seconds < 120, f"the tiny notebook took {seconds:.0f} s"
