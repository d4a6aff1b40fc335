"""The `batchy` command: run the service, or drive it from a shell."""
from __future__ import annotations

import json
import logging
import sys

import click

from . import settings as settings_mod
from .client import Batchy, BatchyError


@click.group()
def cli():
    """Batchy: batch state and incremental-load watermarks for ETL workflows."""


@cli.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to bind.")
@click.option("--port", default=5000, show_default=True, type=int, help="Port to bind.")
@click.option("--workers", type=int, default=None, help="gunicorn worker processes [BATCHY_WORKERS].")
@click.option("--threads", type=int, default=None, help="Threads per worker [BATCHY_THREADS].")
def serve(host, port, workers, threads):
    """Run the service under gunicorn."""
    from gunicorn.app.base import BaseApplication

    from .db import EMBEDDED_WARNING

    conf = settings_mod.load()
    workers = workers or conf["BATCHY_WORKERS"]
    if not conf["BATCHY_REDIS_URL"]:
        click.secho("WARNING: " + EMBEDDED_WARNING, fg="red", bold=True, err=True)
        workers = 1  # the embedded store lives inside one process
    logging.basicConfig(level=conf["BATCHY_LOG_LEVEL"].upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": workers,
        "worker_class": "gthread",
        "threads": threads or conf["BATCHY_THREADS"],
        "timeout": 120,
        "graceful_timeout": 10,
        "keepalive": 5,
        "accesslog": "-",
        "errorlog": "-",
    }

    class Server(BaseApplication):
        def load_config(self):
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):
            from . import create_app

            return create_app()

    Server().run()


def _client() -> Batchy:
    return Batchy()


def _emit(result) -> None:
    click.echo(result if isinstance(result, str) else json.dumps(result, indent=2), nl=not isinstance(result, str))


def _call(fn, *args, **kwargs):
    try:
        _emit(fn(*args, **kwargs))
    except BatchyError as exc:
        raise click.ClickException(f"{exc.message} ({exc.status} {exc.code})") from None
    except OSError as exc:
        raise click.ClickException(f"cannot reach Batchy at {_client().url}: {exc}") from None


@cli.command()
@click.argument("wf")
@click.option("--reset", is_flag=True, help="Load the file verbatim, discarding runtime state (rewind).")
def load(wf, reset):
    """Load or reload cfg/<WF>.yaml."""
    _call(_client().load, wf, reset=reset)


@cli.command()
@click.argument("wf")
def status(wf):
    """Print the state of every job of WF."""
    _call(_client().status, wf)


@cli.command("open")
@click.argument("wf")
@click.option("--format", "fmt", type=click.Choice(["json", "infa"]), default="json", show_default=True)
@click.option("--dry-run", is_flag=True, help="Show what open would return; change nothing.")
def open_(wf, fmt, dry_run):
    """Open a batch of WF and print its parameters (e.g. --format infa > wf1.param)."""
    _call(_client().open, wf, fmt=fmt, dry_run=dry_run)


def _close_options(fn):
    fn = click.option("--job", help="Only this job step.")(fn)
    fn = click.option("--records-processed", type=click.IntRange(min=0), help="Rows the run processed.")(fn)
    fn = click.option("--message", help="A note stored on the job(s).")(fn)
    fn = click.option("--batch-id", type=int, help="Refuse (409) if this is no longer the current batch.")(fn)
    return click.argument("wf")(fn)


@cli.command()
@_close_options
def close(wf, job, records_processed, message, batch_id):
    """Mark the open batch of WF (or one job) successful."""
    _call(_client().close, wf, job=job, records_processed=records_processed, message=message, batch_id=batch_id)


@cli.command()
@_close_options
def fail(wf, job, records_processed, message, batch_id):
    """Mark the open batch of WF (or one job) failed; the next open reruns the same window."""
    _call(_client().fail, wf, job=job, records_processed=records_processed, message=message, batch_id=batch_id)


def main(argv=None) -> int:
    try:
        cli.main(args=argv, prog_name="batchy", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
