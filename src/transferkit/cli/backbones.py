"""`transferkit backbones`: the curated backbones and where each one's weights would come from."""

from __future__ import annotations

import typer

from transferkit.cli import output


def backbones(
    pattern: str = typer.Argument("*", help="shell-style filter, e.g. 'efficientnet*'"),
    all_timm: bool = typer.Option(False, "--all", help="list every timm model name instead of the curated list"),
    fmt: str = typer.Option("table", "--format", help="table or json"),
) -> None:
    """List the curated backbones and where their pretrained weights would come from here."""
    from transferkit.backbones import CURATED, list_backbones, weights_availability

    output.check_format(fmt, ("table", "json"))
    if all_timm:
        names = list_backbones(pattern, curated_only=False)
        if fmt == "json":
            output.print_json(names)
        else:
            for n in names:
                output.info(n)
        return
    wanted = set(list_backbones(pattern))
    rows = [(c.name, c.family, weights_availability(c.name), c.description) for c in CURATED if c.name in wanted]
    if fmt == "json":
        output.print_json([dict(zip(("name", "family", "weights", "description"), r)) for r in rows])
    else:
        output.print_table("backbones (default: efficientnet_lite0)", ("name", "family", "weights here", "description"), rows)
