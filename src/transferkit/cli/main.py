"""The `transferkit` command: a thin typer layer over the library.

Each command lives in its own module (one per command group) and is registered here. Known errors
(:class:`~transferkit.core.errors.TransferkitError`) print one line and exit 1; set
``TRANSFERKIT_DEBUG=1`` for the full traceback.
"""

from __future__ import annotations

import logging
import os
import sys

# OpenMP threads that spin while they wait (the default) waste most of the CPU when other work shares
# the cores: measured on a busy 2-core machine, 7.9 s per step spinning vs 0.10 s passive
# (benchmarks/results/demo.md). The command line is where transferkit owns the process, so it asks
# for passive waiting before anything imports torch; a value the user set wins. (Library users set
# the variable themselves; it must be in the environment before torch loads.)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

from transferkit import __version__  # noqa: E402
from transferkit.cli import output  # noqa: E402

app = typer.Typer(
    name="transferkit",
    help="Pretrained ImageNet networks turned into custom image classifiers; look inside them and attack them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        output.info(f"transferkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="more log output (-v info, -vv debug)"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version"),
) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)


def _register() -> None:
    from transferkit.cli.backbones import backbones
    from transferkit.cli.classify import classify

    app.command("backbones")(backbones)
    app.command("classify")(classify)
    # Command groups added by later stages register themselves here, one line each.
    from transferkit.cli.attack import attack_command, robustness_command

    app.command("attack")(attack_command)
    app.command("robustness")(robustness_command)
    from transferkit.cli.datasets import datasets_app

    app.add_typer(datasets_app, name="datasets")
    from transferkit.cli.demo import demo

    app.command("demo")(demo)
    from transferkit.cli.data import data_app

    app.add_typer(data_app, name="data")
    from transferkit.cli.finetune import lr_find_command

    app.command("lr-find")(lr_find_command)
    from transferkit.cli.cache import cache_app
    from transferkit.cli.evaluate import evaluate
    from transferkit.cli.predict import predict
    from transferkit.cli.train import train

    app.command("train")(train)
    app.command("predict")(predict)
    app.command("evaluate")(evaluate)
    app.add_typer(cache_app, name="cache")
    from transferkit.cli.explain import dream, featuremaps

    app.command("featuremaps")(featuremaps)
    app.command("dream")(dream)
    from transferkit.cli.engines import engines_command

    app.command("engines")(engines_command)
    from transferkit.cli.export import export
    from transferkit.cli.serve import serve

    app.command("export")(export)
    app.command("serve")(serve)


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    from transferkit.core.errors import TransferkitError

    try:
        # In non-standalone mode click returns the code of a typer.Exit instead of raising it.
        code = app(args=argv, standalone_mode=False)
    except TransferkitError as exc:
        if output.debug_enabled():
            raise
        output.error_line(str(exc))
        return 1
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except typer.Abort:
        output.error_line("aborted")
        return 130
    except KeyboardInterrupt:
        output.error_line("interrupted")
        return 130
    except Exception as exc:  # click usage errors and the like
        import click

        # typer >= 0.22 raises its own vendored click's exceptions (typer._click), which are not
        # subclasses of the installed click's: accept both, or usage errors look like crashes.
        click_errors: tuple[type, ...] = (click.ClickException,)
        try:
            from typer._click.exceptions import ClickException as TyperClickException

            click_errors += (TyperClickException,)
        except ImportError:
            pass
        if isinstance(exc, click_errors):
            exc.show()
            return exc.exit_code
        if os.environ.get("TRANSFERKIT_DEBUG"):
            raise
        output.error_line(f"{type(exc).__name__}: {exc} (set TRANSFERKIT_DEBUG=1 for the traceback)")
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
