"""The `batchy` command: run the service, or drive it from a shell.

One module per kind of command: output.py (tables, JSON, --quiet, exit codes),
commands.py (the batch lifecycle), reads.py, admin.py, serve.py (serve, export,
import), run.py (`batchy run` and the environment of a run), backfill.py
(`batchy backfill`) and backfill_run.py (its endpoints' client and chunk workers).
"""
from __future__ import annotations

import signal

import click

from . import admin, backfill, commands, reads, run, serve
from .output import (BATCH_COLUMNS, EXIT_BAD_INPUT, EXIT_BY_STATUS, EXIT_CODES_HELP, EXIT_CONFLICT, EXIT_ERROR,
                     EXIT_NOT_FOUND, EXIT_OK, EXIT_PAUSED, EXIT_UNAUTHORIZED, EXIT_UNAVAILABLE, EXIT_USAGE, STATE_COLUMNS,
                     Failed, env_lines, env_name, table)
from .run import TAIL_CHARS, window_env

__all__ = [
    "cli", "main", "COMMANDS", "Failed", "table", "env_name", "env_lines", "window_env", "TAIL_CHARS",
    "STATE_COLUMNS", "BATCH_COLUMNS", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_NOT_FOUND", "EXIT_CONFLICT",
    "EXIT_PAUSED", "EXIT_UNAUTHORIZED", "EXIT_UNAVAILABLE", "EXIT_BAD_INPUT", "EXIT_BY_STATUS",
]


@click.group(epilog=EXIT_CODES_HELP)
def cli():
    """Batchy: batch state and incremental-load watermarks for ETL workflows."""


# Every command of `batchy`, module by module (click lists them sorted by name).
COMMANDS = [*serve.COMMANDS, *commands.COMMANDS, *reads.COMMANDS, *admin.COMMANDS, *run.COMMANDS,
            *backfill.COMMANDS]
for _command in COMMANDS:
    cli.add_command(_command)


def main(argv=None) -> int:
    """Run batchy with argv (default sys.argv[1:]); return the exit code (EXIT_*)."""
    try:
        code = cli.main(args=argv, prog_name="batchy", standalone_mode=False)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):  # Ctrl-C: what a shell reports, 128 + SIGINT
            return 128 + signal.SIGINT
        click.echo("Aborted!", err=True)
        return EXIT_ERROR
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return code if isinstance(code, int) else EXIT_OK  # an int: ctx.exit(code), as `wait` does
