"""`transferkit cache info|clear`: the on-disk feature cache and exported ONNX graphs."""

from __future__ import annotations

import typer

from transferkit.cli import output

cache_app = typer.Typer(help="Inspect or clear the feature cache ($TRANSFERKIT_CACHE_DIR or ~/.cache/transferkit).", no_args_is_help=True)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@cache_app.command("info")
def info(fmt: str = typer.Option("table", "--format", help="table or json")) -> None:
    """Where the cache is, how big, and how many feature vectors per backbone."""
    from transferkit.features import FeatureCache

    output.check_format(fmt, ("table", "json"))
    ci = FeatureCache().info()
    if fmt == "json":
        output.print_json(ci.to_dict())
        return
    output.info(f"cache directory: {ci.directory} ({_size(ci.size_bytes)})")
    output.info(f"feature vectors: {ci.feature_entries}; files with a known content hash: {ci.hashed_files}")
    if ci.models:
        output.print_table("features by backbone", ("backbone", "key", "vectors"), [(m["description"], m["model_key"], m["entries"]) for m in ci.models])
    if ci.onnx_models:
        output.info("exported ONNX graphs: " + ", ".join(ci.onnx_models))


@cache_app.command("clear")
def clear(yes: bool = typer.Option(False, "--yes", "-y", help="do not ask")) -> None:
    """Delete everything derived and cached (features, ONNX graphs, fitted heads, plots, verify results); downloaded datasets stay."""
    from transferkit.features import FeatureCache

    cache = FeatureCache()
    if not yes and not typer.confirm(f"delete the transferkit feature cache in {cache.directory}?"):
        raise typer.Exit(1)
    freed = cache.clear()
    output.info(f"cleared {cache.directory} ({_size(freed)} freed)")
