"""The one place the CLI prints: tables, JSON, and one-line errors."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def debug_enabled() -> bool:
    return os.environ.get("TRANSFERKIT_DEBUG", "") not in ("", "0")


def print_json(data: Any) -> None:
    """Print ``data`` as JSON on stdout (plain text, no colour codes)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    table = Table(title=title, show_lines=False)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*[str(v) for v in row])
    console.print(table)


def info(message: str) -> None:
    console.print(message, highlight=False)


def line(message: str) -> None:
    """One line on stdout, never wrapped (paths stay copyable whatever the terminal's width)."""
    console.print(message, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


def error_line(message: str) -> None:
    """One clear line on stderr: what is wrong and what to do."""
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    error_line(message)
    return typer.Exit(code)


def check_format(value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(allowed)}")
    return value
