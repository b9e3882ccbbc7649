"""The ``imgclf`` command: parse options, call :mod:`imgclf.api`, render with Rich.

One module per task (data, train, evaluate, predict, deploy, embeddings,
match), the options several commands share in :mod:`imgclf.cli.options`,
and the tables apart in :mod:`imgclf.cli.render`. Errors a user can fix are
printed as one line; ``--debug`` (or ``IMGCLF_DEBUG=1``) shows the
traceback instead.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer._click.exceptions import ClickException  # typer 0.29 bundles its own click; standalone click's never match

from imgclf.cli import data, deploy, embeddings, evaluate, lifecycle, match, monitor, predict, promotion, review, train
from imgclf.console import console, console_logging
from imgclf.errors import ImgclfError
from imgclf.files import PATH_BYTES, disk_error
from imgclf.version import __version__

app = typer.Typer(
    name="imgclf",
    help="From a folder of labelled images to a trained, evaluated, deployed image classifier.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)

_debug = False  # main() reads IMGCLF_DEBUG; --debug turns it on for one run


def _version(value: bool) -> None:
    if value:
        print(f"imgclf {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """From a folder of labelled images to a trained, evaluated, deployed image classifier."""
    global _debug
    _debug = _debug or debug
    ctx.with_resource(console_logging())  # library messages on the console until the command ends


# The order of `imgclf --help`: a dataset, then training, measuring, using and shipping a model, then embeddings.
_ORDER = ("inspect", "preview-augment", "review", "train", "models", "evaluate", "predict", "compare", "report",
          "calibrate", "tune", "ensemble", "update", "diff", "explain", "export", "serve", "promote", "rollback",
          "versions", "monitor", "embed", "similar", "match")
# Any: the command functions differ in signature (inferred as a whole, they would be typed `function`)
_COMMANDS: dict[str, tuple[Any, str]] = {**data.COMMANDS, **train.COMMANDS, **evaluate.COMMANDS, **predict.COMMANDS, **deploy.COMMANDS,
             **embeddings.COMMANDS, **match.COMMANDS, **lifecycle.COMMANDS, **promotion.COMMANDS, **monitor.COMMANDS,
             **review.COMMANDS}
for _name in _ORDER:
    _command, _epilog = _COMMANDS[_name]
    app.command(_name, epilog=_epilog)(_command)
    if _name == "similar":
        app.add_typer(embeddings.index_app, name="index")


def main() -> None:
    """Console-script entry point: one-line errors unless --debug (or IMGCLF_DEBUG=1).

    It reads IMGCLF_DEBUG on each call, not at import, so that a second run in one
    process (the test suite runs most commands in-process) starts from the same state.
    """
    global _debug
    _debug = os.environ.get("IMGCLF_DEBUG") == "1"
    command = typer.main.get_command(app)
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print as their own bytes, as ls does
        stream.reconfigure(errors=PATH_BYTES)  # type: ignore[union-attr]  # stdout/stderr: TextIOWrapper
    try:
        code = command.main(args=sys.argv[1:], prog_name="imgclf", standalone_mode=False)
    except ImgclfError as error:
        if _debug:
            raise
        _fail(str(error))
    except OSError as error:  # a full disk is the user's to fix; other OS errors are bugs and keep their traceback
        readable = disk_error(error)
        if readable is None or _debug:
            raise
        _fail(str(readable))
    except (typer.Abort, KeyboardInterrupt):
        console.print("interrupted")
        sys.exit(130)
    except ClickException as error:  # usage mistakes: click's message, usage line and "Did you mean", exit 2
        error.show()
        sys.exit(error.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str) -> None:
    """The one-line error and exit code 2 of a mistake the user can fix."""
    console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)  # messages may hold [brackets]
    sys.exit(2)
