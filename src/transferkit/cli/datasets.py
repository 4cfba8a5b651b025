"""`transferkit datasets ...`: list, download and locate the datasets the toolkit can fetch."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import typer

from transferkit.cli import output

datasets_app = typer.Typer(help="Datasets the toolkit can fetch: list, download (progress, checksum, cache, resume), path.",
                           no_args_is_help=True)


@contextlib.contextmanager
def download_progress() -> Iterator:
    """A rich progress display; yields a factory ``name -> progress(done, total)`` for the download code."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=output.err_console, transient=False) as progress:

        def factory(name: str):
            task = progress.add_task(name, total=None)

            def update(done: int, total: int | None) -> None:
                progress.update(task, completed=done, total=total)

            return update

        yield factory


@datasets_app.command("list")
def list_command(fmt: str = typer.Option("table", "--format", help="table or json")) -> None:
    """The datasets `transferkit datasets download` knows, and whether each is in the cache."""
    from transferkit.data.sources import list_datasets, prepared_path

    output.check_format(fmt, ("table", "json"))
    rows = []
    for info in list_datasets():
        where = prepared_path(info.name)
        rows.append({"name": info.name, "title": info.title, "classes": info.classes, "download": info.approx_download,
                     "license": info.license, "cached": str(where) if where else None})
    if fmt == "json":
        output.print_json(rows)
        return
    output.print_table(None, ("name", "classes", "download", "license", "in cache"),
                       [(r["name"], r["classes"], r["download"], r["license"], "yes" if r["cached"] else "no") for r in rows])


@datasets_app.command("download")
def download_command(
    name: str = typer.Argument(..., help="oxford-pets, petimages or fashion-mnist (see `transferkit datasets list`)"),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="cache root (default $TRANSFERKIT_CACHE_DIR or ~/.cache/transferkit)"),
) -> None:
    """Download a dataset (progress, checksum, resume of a partial download) and prepare it in the cache."""
    from transferkit.core.errors import DataError
    from transferkit.data.sources import download_dataset, fashion_mnist, get_dataset_info, unreachable_reason
    from transferkit.data.sources.catalog import prepared_path

    info = get_dataset_info(name)
    ready = prepared_path(info.name, cache=cache_dir)
    if ready is None and not (info.name == "fashion-mnist" and fashion_mnist.debian_source() is not None):
        why = unreachable_reason(info.host)
        if why is not None:
            raise DataError(f"cannot download {info.name}: {why}. Connect to the internet and rerun (a partial download resumes)")
        output.info(f"downloading {info.title} ({info.approx_download}) from {info.homepage}")
    with download_progress() as factory:
        path = download_dataset(info.name, cache=cache_dir, progress_factory=factory)
    output.info(f"{info.name} ready in {path}")
    output.info(f"use it with: transferkit demo --data {path}   (licence: {info.license})")


@datasets_app.command("path")
def path_command(
    name: str = typer.Argument(..., help="a dataset name"),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="cache root"),
) -> None:
    """Print where a downloaded dataset is (exit 1 when it is not in the cache)."""
    from transferkit.data.sources import get_dataset_info, prepared_path

    info = get_dataset_info(name)
    where = prepared_path(info.name, cache=cache_dir)
    if where is None:
        raise output.fail(f"{info.name} is not in the cache; run `transferkit datasets download {info.name}`")
    output.info(str(where))
