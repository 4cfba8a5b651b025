"""Open the demo report in headless Chromium and check that every section and image is there.

    python benchmarks/check_demo_report.py transferkit-demo/report.html [--allow-skipped finetune]
        [--screenshot report.png]

A copy of the report gets a few lines of JavaScript that, once the page has loaded, write onto
each <img> whether the browser decoded it (``complete`` and ``naturalWidth > 0``); Chromium's
``--dump-dom`` then prints the rendered DOM, which is parsed here. Checks:

- the summary, settings and all seven step sections are in the page;
- each step's status is "ok" (or one of ``--allow-skipped`` with status "skipped");
- each "ok" step has its images (photos, confusion matrix, feature-map grids, the four ideal
  images, original / adversarial / perturbation, the robustness curve), every one embedded as a
  data URI and decoded by the browser;
- nothing in the page refers to an external resource.

Needs Debian's chromium (``apt-get install -y chromium``). Exit code 0 when everything is there.
"""

from __future__ import annotations

import argparse
import html.parser
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

STEPS = ("classify", "transfer", "finetune", "featuremaps", "dream", "attack", "robustness")
# Images each step must show when it ran: exact names, or a prefix ending in "*" (at least one).
EXPECTED_IMAGES = {
    "classify": ["photo_*"],
    "transfer": ["confusion"],
    "finetune": ["confusion"],
    "featuremaps": ["photo", "layer_*"],
    "dream": ["tabby_cat_tv", "tabby_cat_plain", "zebra_tv", "zebra_plain"],
    "attack": ["original", "adversarial", "perturbation"],
    "robustness": ["curve"],
}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
_PROBE = """<script>
window.addEventListener('load', function () {
  document.querySelectorAll('img').forEach(function (img) {
    img.setAttribute('data-loaded', (img.complete && img.naturalWidth > 0) ? 'yes' : 'no');
    img.setAttribute('data-natural-width', String(img.naturalWidth));
  });
  var done = document.createElement('div'); done.id = 'tk-check-done'; document.body.appendChild(done);
});
</script>"""


class _DomParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, str] = {}
        self.images: list[dict[str, str]] = []
        self.external: list[str] = []
        self.done = False
        self._current: str | None = None

    def handle_starttag(self, tag: str, attrs) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "section" and a.get("id"):
            self.sections[a["id"]] = a.get("data-status", "")
            self._current = a["id"]
        if tag == "img":
            self.images.append(a)
        if tag == "div" and a.get("id") == "tk-check-done":
            self.done = True
        for key in ("src", "href"):
            value = a.get(key, "")
            if value and not value.startswith(("data:", "#")):
                self.external.append(f"<{tag} {key}={value[:80]}>")


def find_chromium(explicit: str | None) -> str:
    for candidate in ([explicit] if explicit else []) + ["/usr/bin/chromium", "chromium", "chromium-browser"]:
        path = shutil.which(candidate) if candidate else None
        if path:
            return path
    sys.exit("chromium not found: apt-get install -y chromium (Debian), or pass --chromium PATH")


def rendered_dom(report: Path, chromium: str, screenshot: Path | None, timeout: float) -> str:
    with tempfile.TemporaryDirectory(prefix="tk-check-") as tmp:
        tmp_dir = Path(tmp)
        page = tmp_dir / "report.html"
        text = report.read_text(encoding="utf-8")
        page.write_text(text.replace("</body>", _PROBE + "</body>") if "</body>" in text else text + _PROBE, encoding="utf-8")
        base = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_dir / 'profile'}"]
        dom = subprocess.run([*base, "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                             capture_output=True, text=True, timeout=timeout)
        if dom.returncode != 0 or "<html" not in dom.stdout:
            sys.exit(f"chromium failed (exit {dom.returncode}): {dom.stderr.strip()[-400:]}")
        if screenshot is not None:
            subprocess.run([*base, "--window-size=1200,6000", "--hide-scrollbars", f"--screenshot={screenshot.resolve()}",
                            report.resolve().as_uri()], capture_output=True, text=True, timeout=timeout, check=False)
        return dom.stdout


def check(dom: str, allow_skipped: set[str]) -> tuple[list[str], _DomParser]:
    """Problems found in the rendered DOM (empty: everything is there), and the parsed page."""
    parser = _DomParser()
    parser.feed(dom)
    problems: list[str] = []
    if not parser.done:
        problems.append("the page's load event never fired (the probe script did not run)")
    for section in ("summary", "config", *(f"step-{k}" for k in STEPS)):
        if section not in parser.sections:
            problems.append(f"section {section} is missing")
    by_step: dict[str, list[dict[str, str]]] = {}
    for img in parser.images:
        step, _, name = img.get("data-image", "/").partition("/")
        by_step.setdefault(step, []).append({**img, "name": name})
        where = img.get("data-image") or img.get("alt", "?")
        if not img.get("src", "").startswith("data:image/"):
            problems.append(f"image {where} is not embedded as a data URI")
        if img.get("data-loaded") != "yes":
            problems.append(f"image {where} did not decode in the browser (naturalWidth {img.get('data-natural-width')})")
    for key in STEPS:
        status = parser.sections.get(f"step-{key}")
        if status is None:
            continue
        if status != "ok":
            if not (status == "skipped" and key in allow_skipped):
                problems.append(f"step {key} has status {status!r}")
            continue
        names = {img["name"] for img in by_step.get(key, [])}
        for want in EXPECTED_IMAGES[key]:
            ok = any(n.startswith(want[:-1]) for n in names) if want.endswith("*") else want in names
            if not ok:
                problems.append(f"step {key} lacks image {want}")
    problems += [f"external resource {e}" for e in parser.external]
    return problems, parser


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--allow-skipped", default="", help="comma-separated steps that may be skipped (e.g. finetune for --quick)")
    ap.add_argument("--screenshot", type=Path, help="also write a full-page screenshot PNG")
    ap.add_argument("--chromium", help="browser binary (default /usr/bin/chromium)")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args(argv)
    if not args.report.is_file():
        sys.exit(f"{args.report} does not exist; run `transferkit demo` first")
    dom = rendered_dom(args.report, find_chromium(args.chromium), args.screenshot, args.timeout)
    problems, parser = check(dom, {s.strip() for s in args.allow_skipped.split(",") if s.strip()})
    listed = ", ".join(f"{k}={v or '-'}" for k, v in parser.sections.items())
    print(f"sections: {listed}")
    decoded = sum(1 for i in parser.images if i.get("data-loaded") == "yes")
    print(f"images: {len(parser.images)} embedded, {decoded} decoded by Chromium")
    if args.screenshot:
        print(f"screenshot: {args.screenshot}")
    if problems:
        print("PROBLEMS:\n  " + "\n  ".join(problems))
        return 1
    print("OK: every section and image is there")
    return 0


if __name__ == "__main__":
    sys.exit(main())
