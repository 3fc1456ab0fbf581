"""The one place errors become messages: every cifar-edge CLI runs through ``run_cli``.

A CifarEdgeError becomes one line on stderr and its exit code; anything unexpected becomes
one line too, unless ``--traceback`` (or CIFAR_EDGE_TRACEBACK=1) asks for the full story.

The options several commands share (--traceback, --no-verify and --allow-failed, --token and
--no-auth) and the loading of their model are here too, so that no CLI imports another.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable

import click

from runtime.errors import CifarEdgeError, ExitCode
from runtime.web.config import MIN_TOKEN_LENGTH

TOKEN_ENV = "CIFAR_EDGE_TOKEN"


def traceback_option(f):
    return click.option("--traceback", "show_traceback", is_flag=True,
                        help="Show the full Python traceback on errors (for bug reports).")(f)


def trust_options(f):
    """--no-verify and --allow-failed: the two ways past a model's checks, for every command
    that loads one (``runtime.Classifier``'s ``verify`` and ``allow_failed``)."""
    f = click.option("--allow-failed", is_flag=True,
                     help="Run a model whose own metadata says its export failed the parity check.")(f)
    return click.option("--no-verify", is_flag=True,
                        help="Skip the model's self-check: its reference images are not run at load to "
                             "confirm this machine gives the exported answers.")(f)


def auth_options(f):
    """--token and --no-auth, shared by cifar-serve and cifar-run --serve."""
    f = click.option("--no-auth", is_flag=True,
                     help="Serve a network address without a token (anyone who can reach it "
                          "may use it; a warning is printed).")(f)
    return click.option("--token", envvar=TOKEN_ENV, metavar="TOKEN",
                        help="The token clients must give on a network address, at least "
                             f"{MIN_TOKEN_LENGTH} printable characters [default: one is generated and "
                             f"printed; also read from ${TOKEN_ENV}]. On 127.0.0.1 none is needed "
                             "unless given.")(f)


def load_classifier(model: str | None, provider: str, threads: int, top_k: int, no_verify: bool,
                    allow_failed: bool, note: Callable[[str], None]):
    """The Classifier a command runs: ``model``, or the bundled one (``runtime.model.bundled``), past
    the checks that --no-verify and --allow-failed waive; ``note`` tells of a fallback."""
    from runtime.model import bundled

    return bundled.load_classifier(model, provider=provider, threads=threads, top_k=top_k, verify=not no_verify,
                                   allow_failed=allow_failed, note=note)


def run_cli(prog: str, body: Callable[[], int | None], show_traceback: bool = False) -> None:
    """Run ``body``; translate errors; exit with the right code. Never returns."""
    show_traceback = show_traceback or os.environ.get("CIFAR_EDGE_TRACEBACK") == "1"
    try:
        code = body()
    except CifarEdgeError as exc:
        if show_traceback:
            traceback.print_exc()
        click.echo(f"{prog}: {exc.label}{exc}", err=True)
        sys.exit(int(exc.exit_code))
    except KeyboardInterrupt:
        click.echo(f"{prog}: interrupted", err=True)
        sys.exit(int(ExitCode.INTERRUPTED))
    except click.exceptions.Exit:
        raise
    except click.ClickException:
        raise
    except Exception as exc:  # a bug or an unforeseen environment problem: still one line
        if show_traceback:
            traceback.print_exc()
        click.echo(f"{prog}: unexpected error: {type(exc).__name__}: {exc} "
                   "(run again with --traceback for details)", err=True)
        sys.exit(int(ExitCode.ERROR))
    sys.exit(int(code or 0))
