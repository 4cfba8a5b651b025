"""``python -m transferkit.runtime model.onnx photos/``: classify images with an exported model, no torch.

Prints one line per image (``path<TAB>label probability ...``), or JSON with ``--json``; unreadable
files are reported on stderr. Exits 1 when no image could be classified, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys

from transferkit.core.errors import TransferkitError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m transferkit.runtime", description="Classify images with an exported transferkit model.")
    p.add_argument("model", help="the .onnx file written by `transferkit export`")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--top-k", "-k", type=int, default=3, help="classes to show per image (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    from transferkit.runtime.model import Runtime, expand_paths

    args = _parser().parse_args(argv)
    try:
        runtime = Runtime(args.model)
        results = runtime.predict(expand_paths(args.images), top_k=max(1, args.top_k))
    except TransferkitError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    if args.json:
        sys.stdout.write(json.dumps({"model": args.model, "results": [r.to_dict() for r in results]}, indent=2) + "\n")
    else:
        for r in results:
            if r.ok:
                sys.stdout.write(f"{r.source}\t" + "  ".join(f"{c} {p:.3f}" for c, p in r.top) + "\n")
    for r in results:
        if not r.ok:
            sys.stderr.write(f"error: {r.source}: {r.error}\n")
    return 0 if any(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
