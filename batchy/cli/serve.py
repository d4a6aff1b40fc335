"""Running the service (`batchy serve`), and moving its state between Redis servers (export, import)."""
from __future__ import annotations

import json
import logging
import os
import re
import socket

import click

from .. import settings as settings_mod
from ..settings import write_tokens


@click.command()
@click.option("--host", default=None,
              help="Address to bind (0.0.0.0: every interface). Default: 127.0.0.1 unless a write token is set.")
@click.option("--port", default=5000, show_default=True, type=int, help="Port to bind.")
@click.option("--workers", type=int, default=None, help="gunicorn worker processes [BATCHY_WORKERS].")
@click.option("--threads", type=int, default=None, help="Threads per worker [BATCHY_THREADS].")
def serve(host, port, workers, threads):
    """Run the service under gunicorn."""
    from gunicorn.app.base import BaseApplication
    from gunicorn.arbiter import Arbiter

    from ..web.db import EMBEDDED_WARNING

    conf = settings_mod.load()
    workers = workers or conf["BATCHY_WORKERS"]
    if not conf["BATCHY_REDIS_URL"]:
        click.secho("WARNING: " + EMBEDDED_WARNING, fg="red", bold=True, err=True)
        workers = 1  # the embedded store lives inside one process
    else:
        _announce_store(conf)
    logging.basicConfig(level=conf["BATCHY_LOG_LEVEL"].upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host = _announce_host(host, port, conf)
    _check_free(host, port)
    options = {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": workers,
        "worker_class": "gthread",
        # gthread: each /wait waiter holds a thread, and /wait admits at most BATCHY_WAIT_MAX_WAITERS,
        # so adding that many keeps BATCHY_THREADS free for everything else (docs/waitsy.md).
        "threads": (threads or conf["BATCHY_THREADS"]) + conf["BATCHY_WAIT_MAX_WAITERS"],
        "timeout": 120,
        "graceful_timeout": 10,
        "keepalive": 5,
        # gunicorn's own 4 KB request-line limit answers an HTML 414 before the app
        # sees the request: allow the longest GET the OpenAPI document admits.
        "limit_request_line": 8190,
        "accesslog": "-",
        "errorlog": "-",
        # gunicorn >= 24 opens a control socket at one fixed path per user: several
        # services on a host would fight over it, and Batchy does not use it.
        "control_socket_disable": True,
    }

    embedded = not conf["BATCHY_REDIS_URL"]

    class Master(Arbiter):
        def handle_hup(self):
            # gunicorn's SIGHUP starts new workers, which read the settings and
            # BATCHY_TOKENS_FILE afresh; the embedded store lives in its one worker and would
            # be lost with it, and its worker reads the tokens file within a second of a change.
            if embedded:
                self.log.warning("SIGHUP: the embedded store lives in its worker, which keeps running "
                                 "(a new one would start empty); BATCHY_TOKENS_FILE is read again when it changes")
                return
            super().handle_hup()

    class Server(BaseApplication):
        def load_config(self):
            for key, value in options.items():
                if key in self.cfg.settings:  # older gunicorns lack some settings
                    self.cfg.set(key, value)

        def load(self):
            from .. import create_app  # read at load time: bench/baseline.py swaps it

            from ..web import metrics

            _json_gunicorn_errors()
            app = create_app()
            metrics.warm(app)  # in each worker: its first dashboard or scrape finds the fleet read
            return app

        def run(self):  # BaseApplication.run, with our Master
            try:
                Master(self).run()
            except RuntimeError as exc:
                raise click.ClickException(str(exc)) from None

    Server().run()


def _announce_store(conf: dict, environ=None) -> None:
    """Say on stderr which Redis holds the state (its password hidden), and that it came from
    REDIS_URL when it did: a variable set for another program must not pick the store unseen."""
    environ = os.environ if environ is None else environ
    url = re.sub(r"//[^@/]*@", "//***@", conf["BATCHY_REDIS_URL"])
    source = " (from REDIS_URL: BATCHY_REDIS_URL is not set)" if environ.get("BATCHY_REDIS_URL") is None else ""
    cluster = ", a Redis Cluster" if conf["BATCHY_REDIS_CLUSTER"] else ""
    click.echo(f"batchy: state in Redis at {url}{cluster}{source}", err=True)


def _check_free(host: str, port: int) -> None:
    """Refuse at once a port another process listens on (gunicorn retries for 5 s, then says only
    "Can't connect"); the same SO_REUSEADDR bind gunicorn makes, so a port in TIME_WAIT passes."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}; another process "
                                       "listens there? Choose another port with --port") from None


def _announce_host(host: str | None, port: int, conf: dict) -> str:
    """Return the address to bind, and say on stderr who can reach the service.

    Without a write token anyone who reaches the port may change state: listen on every
    interface only with one, or when told to with --host.
    """
    guarded = bool(write_tokens(conf))
    if host is None:
        host = "0.0.0.0" if guarded else "127.0.0.1"
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if host in ("127.0.0.1", "::1", "localhost"):
        click.echo(f"batchy: listening on {where}, this host only"
                   + ("" if guarded else " (no BATCHY_API_TOKEN is set); --host 0.0.0.0 listens on every interface"),
                   err=True)
    elif guarded:
        click.echo(f"batchy: listening on {where}; changes need a write token", err=True)
    else:
        click.secho(f"WARNING: listening on {where} without a write token: whoever reaches it can change state "
                    "(set BATCHY_API_TOKEN)", fg="red", bold=True, err=True)
    return host


def _json_gunicorn_errors() -> None:
    """Give the requests gunicorn refuses itself Batchy's one JSON error shape.

    A request line over 8190 bytes or a malformed header never reaches Flask: gunicorn
    answers it from its worker with an HTML page (found by fuzzing with schemathesis).
    gunicorn writes those answers through util.write_error only; this replaces it.
    """
    from gunicorn import util

    from ..errors import error_body

    def write_error(sock, status_int, reason, mesg):
        body = error_body(status_int, reason.lower().replace(" ", "_"), mesg or reason)
        head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        util.write_nonblock(sock, head.encode("latin1") + body)

    util.write_error = write_error


def _direct_store():
    from ..storage.connections import connect
    from ..storage.store import BatchStore

    conf = settings_mod.load()
    if not conf["BATCHY_REDIS_URL"]:
        raise click.ClickException("export and import talk to Redis directly: set BATCHY_REDIS_URL")
    return BatchStore(connect(conf["BATCHY_REDIS_URL"], conf["BATCHY_REDIS_TIMEOUT"], conf["BATCHY_REDIS_CLUSTER"]), conf)


@click.command()
@click.argument("workflows", nargs=-1)
@click.option("--output", "-o", type=click.File("w"), default="-", help="File to write (default: stdout).")
@click.option("--no-history", is_flag=True, help="Only the current state, not the batch snapshots.")
def export(workflows, output, no_history):
    """Dump the state of WORKFLOWS (default: all) from BATCHY_REDIS_URL as JSON."""
    from ..errors import BatchyError

    try:
        doc = _direct_store().export(list(workflows) or None, history=not no_history)
    except BatchyError as exc:
        raise click.ClickException(exc.message) from None
    json.dump(doc, output, indent=1)
    output.write("\n")
    click.echo(f"exported {len(doc['workflows'])} workflow(s)", err=True)


@click.command("import")
@click.argument("source", type=click.File("r"))
@click.option("--replace", is_flag=True, help="Overwrite workflows that already exist.")
def import_(source, replace):
    """Restore workflows from an export file into BATCHY_REDIS_URL."""
    from ..errors import BatchyError

    try:
        doc = json.load(source)
        done = _direct_store().import_(doc, replace=replace)
    except ValueError as exc:
        raise click.ClickException(f"not a JSON export file: {exc}") from None
    except BatchyError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"imported {len(done)} workflow(s): {', '.join(done)}", err=True)


@click.command("migrate-keys")
@click.option("--to", "target", type=click.Choice(["cluster", "classic"]), required=True,
              help="The key style to move to (cluster: the workflow name as a hash tag, {wf1}).")
@click.option("--dry-run", is_flag=True, help="Say what would move; change nothing.")
@click.option("--watch", type=float, default=5.0, show_default=True,
              help="Seconds to watch for writes first: a service still writing makes it refuse.")
def migrate_keys(target, dry_run, watch):
    """Move every key in BATCHY_REDIS_URL to the classic or the cluster key style.

    Stop every Batchy service first; start them again afterwards with BATCHY_REDIS_CLUSTER
    matching the new style. Running it again finishes a migration that stopped half way.
    """
    from ..storage import keys
    from ..storage.connections import connect
    from ..storage.migrate import Migration

    conf = settings_mod.load()
    if not conf["BATCHY_REDIS_URL"]:
        raise click.ClickException("migrate-keys talks to Redis directly: set BATCHY_REDIS_URL")
    client = connect(conf["BATCHY_REDIS_URL"], conf["BATCHY_REDIS_TIMEOUT"], conf["BATCHY_REDIS_CLUSTER"])
    if not conf["BATCHY_REDIS_CLUSTER"] and str(client.info("cluster").get("cluster_enabled")) == "1":
        client = connect(conf["BATCHY_REDIS_URL"], conf["BATCHY_REDIS_TIMEOUT"], True)  # a cluster node: route by slot
    migration = Migration(client, keys.style(target == "cluster"))
    if watch > 0:
        click.echo(f"watching for writes for {watch:g} s...", err=True)
        changed = migration.writes_seen(watch)
        if changed:
            shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
            raise click.ClickException(
                f"a live service is writing ({shown} changed in the last {watch:g} s): stop every Batchy "
                "service and runner on this Redis, then run migrate-keys again")
    plan = migration.plan()
    summary = plan.summary()
    click.echo(f"{'would move' if dry_run else 'moving'} {summary['keys']} key(s) of {summary['workflows']} "
               f"workflow(s) to the {target} style; {summary['batches_indexed']} batch(es) re-indexed"
               + ("; the service pause copied to every slot" if plan.paused and target == "cluster" else ""))
    for old, new in plan.moves[:20 if dry_run else 0]:
        click.echo(f"  {old} -> {new}")
    if dry_run:
        if len(plan.moves) > 20:
            click.echo(f"  ... and {len(plan.moves) - 20} more")
        return
    migration.apply(plan)
    click.echo(f"done: start the services with BATCHY_REDIS_CLUSTER={'true' if target == 'cluster' else 'false'}")


COMMANDS = [serve, export, import_, migrate_keys]
