"""Command line: parses arguments and calls the library. Every library error
(TracerError) becomes one line on stderr and its exit code; nothing here does
real work."""

from __future__ import annotations

import os
import sys
import traceback

import click

from tracer import __version__
from tracer.errors import TracerError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tracer")
def cli() -> None:
    """eBPF packet tracer for Kubernetes nodes."""


def main(argv: list[str] | None = None) -> None:
    try:
        rv = cli.main(args=argv, prog_name="tracer", standalone_mode=False)
    except TracerError as exc:
        click.echo(f"tracer: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("tracer: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        # Usage errors: click's own one-line message.
        click.echo(f"tracer: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        # `tracer ... | head`: the reader left; not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except KeyboardInterrupt:
        click.echo("tracer: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug: one line, the traceback only on request
        if os.environ.get("TRACER_DEBUG"):
            traceback.print_exc()
        click.echo(
            f"tracer: internal error: {type(exc).__name__}: {exc} "
            "(set TRACER_DEBUG=1 for a traceback)",
            err=True,
        )
        sys.exit(70)
    sys.exit(rv if isinstance(rv, int) else 0)
