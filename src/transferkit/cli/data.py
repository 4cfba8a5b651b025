"""`transferkit data ...`: look at a dataset before training on it."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli import output

data_app = typer.Typer(help="Inspect image datasets (class folders, Oxford-IIIT Pets, PetImages, Kaggle, CSV).",
                       no_args_is_help=True)

_LAYOUTS = ("auto", "folder", "oxford-pets", "petimages", "kaggle", "csv")


@data_app.command("inspect")
def inspect(
    path: Path = typer.Argument(..., help="dataset folder or path,label[,split] CSV file"),
    layout: str = typer.Option("auto", "--format", help="auto, folder, oxford-pets, petimages, kaggle or csv"),
    as_json: bool = typer.Option(False, "--json", help="print everything as JSON (every bad file, every duplicate)"),
    label_by: str = typer.Option("breed", "--label-by", help="Oxford-IIIT Pets: breed (37 classes) or species"),
    allow_truncated: bool = typer.Option(False, "--allow-truncated", help="keep truncated JPEGs instead of rejecting them"),
    max_pixels: int = typer.Option(None, "--max-pixels", min=0,
                                   help="reject larger images (decompression-bomb guard; default about 179 MP, 0 = off)"),
    workers: int = typer.Option(None, "--workers", help="processes for the verify pass (default: all cores)"),
    no_cache: bool = typer.Option(False, "--no-cache", help="decode every file again, ignoring the verify cache"),
    val: float = typer.Option(0.15, "--val", help="validation fraction for the split shown"),
    test: float = typer.Option(0.15, "--test", help="test fraction when the dataset has no official split"),
    seed: int = typer.Option(0, "--seed", help="split seed"),
    show: int = typer.Option(20, "--show", min=0, help="bad files / duplicates listed in the table view"),
) -> None:
    """Classes, counts, imbalance, image sizes, bad files with reasons, duplicates and split sizes."""
    from transferkit.data import load_images, split_imageset
    from transferkit.data.decode import DEFAULT_MAX_PIXELS
    from transferkit.data.inspect import describe_imageset

    output.check_format(layout, _LAYOUTS)
    imageset = load_images(
        path,
        layout,
        label_by=label_by,
        allow_truncated=allow_truncated,
        max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else (max_pixels or None),
        workers=workers,
        cache=not no_cache,
    )
    imageset = split_imageset(imageset, val=val, test=test, seed=seed)
    info = describe_imageset(imageset)
    if as_json:
        output.print_json(info)
        return
    _print_tables(info, show)


def _print_tables(info: dict, show: int) -> None:
    c = info["counts"]
    output.info(f"{info['root']}: {info['format']} layout ({info['format_reason']})")
    output.info(
        f"kept {c['kept']}, rejected {c['rejected']}, missing {c['missing']} (listed in annotations, absent); "
        f"{info['num_classes']} classes, imbalance ratio {info['imbalance_ratio']}"
        + (f"; verify {info['verify_seconds']:.2f}s, {info['cache_hits']} from cache" if info["verified"] else "")
    )
    splits = info["splits"]
    split_names = list(splits)
    rows = [
        (name, n, *(splits[s].get(name, 0) for s in split_names)) for name, n in info["classes"].items()
    ]
    output.print_table("classes", ("class", "images", *split_names), rows)
    if info.get("split_method"):
        sizes = ", ".join(f"{k} {v}" for k, v in info["split_sizes"].items())
        output.info(f"split: {info['split_method']}: {sizes}")
    if "sizes" in info:
        rows = [(k, *(f"{v:g}" for v in d.values())) for k, d in info["sizes"].items()]
        output.print_table("image sizes", ("", "min", "p5", "median", "p95", "max"), rows)
    if info["rejected"]:
        by_reason = ", ".join(f"{k}: {v}" for k, v in info["rejected_by_reason"].items())
        output.warn(f"{c['rejected']} files not used ({by_reason})")
        rows = [(r["path"], r["reason"]) for r in info["rejected"][:show]]
        if rows:
            output.print_table("not used", ("file", "reason"), rows)
        if c["rejected"] > show:
            output.info(f"... {c['rejected'] - show} more; --json lists them all")
    if info["missing"]:
        output.warn(f"{c['missing']} files listed in the annotations are absent, e.g. {info['missing'][0]}")
    if info["duplicates"]:
        output.warn(f"{len(info['duplicates'])} groups of identical files")
        for group in info["duplicates"][:show]:
            output.info("  = " + "  ".join(group))
    if info["leakage"]:
        output.warn(f"{len(info['leakage'])} duplicate groups span train/val and test (leakage):")
        for group in info["leakage"][:show]:
            output.info("  ! " + "  ".join(group))
    for note in info["notes"]:
        output.info(f"note: {note}")
