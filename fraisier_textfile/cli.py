"""The ``fraisier`` command: click commands only. Each parses its options, makes one library call, and
turns a library error into one ``Error: ...`` line and a non-zero exit.

Nothing here imports prometheus_client at start-up: a ``fraisier record`` run from cron must not pay for it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from fraisier_textfile import catalogue as c
from fraisier_textfile import changes as events
from fraisier_textfile.errors import FraisierTextfileError, InvalidValueError
from fraisier_textfile.textfile import (
    DEFAULT_LOCK_TIMEOUT,
    DIRECTORY_ENVIRONMENT,
    LOCK_TIMEOUT_ENVIRONMENT,
    TextfileStore,
    default_textfile_directory,
)


class InvalidInput(click.ClickException):
    """A bad value: one line, exit 2 like any other misuse."""

    exit_code = 2


@contextmanager
def library_errors() -> Iterator[None]:
    try:
        yield
    except InvalidValueError as error:
        raise InvalidInput(str(error)) from None
    except FraisierTextfileError as error:
        raise click.ClickException(str(error)) from None


class Settings:
    def __init__(self, textfile_dir: Path, lock_timeout: float) -> None:
        self.textfile_dir = textfile_dir
        self.lock_timeout = lock_timeout

    def store(self) -> TextfileStore:
        with library_errors():
            return TextfileStore(self.textfile_dir, self.lock_timeout)


def seconds(name: str, value: str) -> float:
    with library_errors():
        return c.check_seconds(name, value)


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.option(
    "--textfile-dir",
    envvar=DIRECTORY_ENVIRONMENT,
    type=click.Path(file_okay=False, path_type=Path),
    default=default_textfile_directory,
    show_default=str(default_textfile_directory()),
    help=f"Directory of fraisier.prom; created if missing. Point node_exporter's "
    f"--collector.textfile.directory at it (Debian: /var/lib/prometheus/node-exporter). "
    f"Env: {DIRECTORY_ENVIRONMENT}.",
)
@click.option(
    "--lock-timeout",
    envvar=LOCK_TIMEOUT_ENVIRONMENT,
    default=str(DEFAULT_LOCK_TIMEOUT),
    show_default=True,
    metavar="SECONDS",
    help=f"How long to wait for another fraisier process to finish writing the file. "
    f"Env: {LOCK_TIMEOUT_ENVIRONMENT}.",
)
@click.version_option(package_name="fraisier-textfile", prog_name="fraisier")
@click.pass_context
def main(context: click.Context, textfile_dir: Path, lock_timeout: str) -> None:
    """Fraisier's deployment metrics for Prometheus, from short-lived processes.

    Every command merges what it records into one file, TEXTFILE_DIR/fraisier.prom, under a lock and with
    an atomic replace, so the file always holds the totals over every process that ever ran. Serve it with
    node_exporter's textfile collector or with `fraisier metrics`.

    \b
    Examples:
      fraisier record deployment --provider bare_metal --fraise-type api --status success --duration 42
      fraisier exec --provider bare_metal --fraise-type api -- ./deploy.sh
      fraisier textfile show
    """
    logging.basicConfig(format="fraisier: %(levelname)s: %(message)s", level=logging.WARNING)
    context.obj = Settings(textfile_dir, seconds("--lock-timeout", lock_timeout))


pass_settings = click.pass_obj


@main.group()
def record() -> None:
    """Record one event into the textfile (for cron jobs and deploy hooks).

    The event is in TEXTFILE_DIR/fraisier.prom when the command exits 0. A bad value exits 2 with one line
    saying what to fix; a problem with the file or directory exits 1. Nothing is written on error.
    """


def _record(settings: Settings, event: Callable[..., None], *arguments: object) -> None:
    changes = events.Changes()
    with library_errors():
        event(changes, *arguments)
        settings.store().merge(changes)


PROVIDER = click.option("--provider", required=True, help="Provider, e.g. bare_metal or docker_compose.")
DURATION_HELP = "Duration in seconds (a finite number >= 0)."


@record.command()
@PROVIDER
@click.option("--fraise-type", required=True, help="Fraise type, e.g. api, etl, scheduled, backup.")
@click.option("--status", required=True,
              help=f"One of: {', '.join(c.DEPLOYMENT_STATUSES)} (Fraisier's interrupted is recorded as crashed).")
@click.option("--duration", required=True, metavar="SECONDS", help=DURATION_HELP)
@pass_settings
def deployment(settings: Settings, provider: str, fraise_type: str, status: str, duration: str) -> None:
    """A finished deployment: counted by status, its duration observed, its time kept as the last one."""
    _record(settings, events.deployment_complete, provider, fraise_type, status, seconds("--duration", duration))


@record.command()
@PROVIDER
@click.option("--error-type", required=True, help="What went wrong, e.g. timeout, build_failed.")
@pass_settings
def error(settings: Settings, provider: str, error_type: str) -> None:
    """A deployment error, counted by provider and error type."""
    _record(settings, events.deployment_error, provider, error_type)


@record.command()
@PROVIDER
@click.option("--reason", required=True, help="Why, e.g. timeout, health_check, manual.")
@click.option("--duration", required=True, metavar="SECONDS", help=DURATION_HELP)
@pass_settings
def rollback(settings: Settings, provider: str, reason: str, duration: str) -> None:
    """A rollback and how long it took."""
    _record(settings, events.rollback, provider, reason, seconds("--duration", duration))


@record.command("health-check")
@PROVIDER
@click.option("--check-type", required=True, help="e.g. http, tcp, exec, systemd.")
@click.option("--status", required=True, help=f"One of: {', '.join(c.HEALTH_CHECK_STATUSES)}.")
@click.option("--duration", required=True, metavar="SECONDS", help=DURATION_HELP)
@pass_settings
def health_check(settings: Settings, provider: str, check_type: str, status: str, duration: str) -> None:
    """A health check: counted by status (pass or fail), its duration observed."""
    _record(settings, events.health_check, provider, check_type, status, seconds("--duration", duration))


@record.command()
@PROVIDER
@click.option("--up/--down", "available", default=None, help="Whether the provider is available (one is required).")
@pass_settings
def availability(settings: Settings, provider: str, available: bool | None) -> None:
    """Whether a provider is available now (the latest report wins)."""
    if available is None:
        raise InvalidInput("say whether the provider is available: add --up or --down")
    _record(settings, events.provider_availability, provider, available)


@record.command("lock-wait")
@click.option("--service", required=True, help="The service whose deployment lock was awaited.")
@PROVIDER
@click.option("--seconds", "wait_time", required=True, metavar="SECONDS", help="How long it waited.")
@pass_settings
def lock_wait(settings: Settings, service: str, provider: str, wait_time: str) -> None:
    """How long a deployment waited for its lock (the latest report wins)."""
    _record(settings, events.lock_wait, service, provider, seconds("--seconds", wait_time))


@main.command(
    "exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@PROVIDER
@click.option("--fraise-type", required=True, help="Fraise type, e.g. api, etl, scheduled, backup.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_settings
def exec_(settings: Settings, provider: str, fraise_type: str, command: tuple[str, ...]) -> None:
    """Run COMMAND as a tracked deployment and exit with its exit status.

    The deployment counts as active while COMMAND runs. When it ends, its duration is observed and it is
    counted as success (exit 0) or failed, with an error of type exit_code_N or signal_NAME. If this
    process is killed, the deployment is counted as crashed by the next writer. SIGINT, SIGTERM, SIGHUP
    and SIGQUIT are passed on to COMMAND. A command that is not found exits 127 (error type
    command_not_found). If the textfile cannot be written, a warning is printed and COMMAND runs anyway.

    \b
    Example:
      fraisier exec --provider bare_metal --fraise-type api -- ./deploy.sh --env prod
    """
    from fraisier_textfile.execution import run_deployment

    with library_errors():
        status = run_deployment(settings.store(), provider, fraise_type, command)
    sys.exit(status)


@main.group()
def textfile() -> None:
    """Inspect the textfile: where it is, what it holds, whether it is valid."""


@textfile.command()
@pass_settings
def path(settings: Settings) -> None:
    """Print the textfile's path."""
    click.echo(settings.store().path)


@textfile.command()
@pass_settings
def refresh(settings: Settings) -> None:
    """Rewrite the textfile with nothing new: deployments whose process died are counted as crashed, the
    active deployments are recounted, and the file's modification time becomes now.

    \b
    Run it from a timer (every minute, say) on hosts served by node_exporter: the active-deployments gauge
    then drops within a minute of a crash, and the file stays fresh for the stale-file alert on quiet hosts:
      * * * * *  FRAISIER_TEXTFILE_DIR=/var/lib/fraisier/textfile fraisier textfile refresh
    """
    with library_errors():
        settings.store().merge(events.Changes())


@textfile.command()
@pass_settings
def show(settings: Settings) -> None:
    """Print each family of the textfile with its samples."""
    from fraisier_textfile.textformat import describe

    store = settings.store()
    with library_errors():
        document = store.read()
    if not document.blocks:
        click.echo(f"{store.path}: no metrics yet")
        return
    for line in describe(document):
        click.echo(line)


@textfile.command()
@pass_settings
def check(settings: Settings) -> None:
    """Validate the textfile: it parses as node_exporter would, has no timestamps, consistent HELP and TYPE,
    and histograms with the catalogue's buckets. Exits 1 naming the first problem, 0 when valid."""
    from fraisier_textfile.textformat import check_document

    store = settings.store()
    if not store.path.exists():
        raise click.ClickException(f"{store.path} does not exist yet: record an event first, or check --textfile-dir")
    with library_errors():
        document = store.read()
        problems = check_document(document)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise click.ClickException(f"{store.path}: {problems[0]}{more}")
    samples = sum(len(block.lines) for block in document.blocks.values())
    click.echo(f"{store.path}: OK, {len(document.blocks)} families, {samples} samples")


@main.command()
@click.option("--port", "-p", type=click.IntRange(0, 65535), default=8001, show_default=True,
              help="TCP port to listen on.")
@click.option("--address", "-a", default="localhost", show_default=True,
              help="Address to listen on: localhost (the default) keeps the metrics on this machine; "
              "0.0.0.0 or a host's address exposes them (use --web-config-file then).")
@click.option("--web-config-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Web config (TLS, basic auth) in the format of Prometheus exporters; see above.")
@click.option("--max-requests", type=click.IntRange(min=0), default=0, show_default=True,
              help="Scrapes served at once; more get 503 at once, as with node_exporter's --web.max-requests "
              "(say 40, on a host exposed to many clients). 0: no limit.")
@pass_settings
def metrics(settings: Settings, port: int, address: str, web_config_file: Path | None, max_requests: int) -> None:
    """Serve TEXTFILE_DIR/fraisier.prom over HTTP at /metrics, for Prometheus to scrape.

    For hosts without node_exporter (with it, point its textfile collector at TEXTFILE_DIR instead). A scrape
    shows what the file holds, with the deployments in progress counted live; the file is re-read only when
    it changed. Until a fraisier process writes the file, every family is served without samples. There is a
    landing page at /. SIGTERM or SIGINT stop it (exit 0).

    --web-config-file takes the web config file of Prometheus exporters (exporter-toolkit): TLS, client
    certificates, basic auth. Paths in it are relative to its directory; it is re-read when it changes.

    \b
    Example web config:
      tls_server_config:
        cert_file: server.crt
        key_file: server.key
        min_version: TLS12                            # optional
        client_auth_type: RequireAndVerifyClientCert  # optional: client certificates ...
        client_ca_file: clients-ca.crt                # ... signed by this CA
      basic_auth_users:                               # optional: user name: bcrypt hash of the password
        prometheus: $2b$12$...                        # the whole hash made as below

    \b
    A hash for a password:
      python3 -c 'import bcrypt; print(bcrypt.hashpw(b"PASSWORD", bcrypt.gensalt()).decode())'

    \b
    Examples:
      fraisier metrics
      fraisier metrics --address 0.0.0.0 --port 9101 --web-config-file /etc/fraisier/web.yml
      fraisier metrics -p 8001 -a localhost          # Fraisier's own flags work too
    """
    import signal
    import threading

    from fraisier_textfile.server import serve_textfile

    if not address.strip():
        raise InvalidInput("--address is empty: give localhost, a host's address, or 0.0.0.0 for every interface")
    stop = threading.Event()

    def request_stop(signal_number: int, frame: object) -> None:
        stop.set()

    # Before the server starts: a SIGTERM during start-up is a clean stop too.
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    store = settings.store()
    with library_errors():
        server = serve_textfile(
            store, port=port, address=address, web_config_file=web_config_file, max_requests=max_requests
        )
    details = ", ".join(
        part for part in (
            "TLS" if server.tls else "",
            "basic auth" if server.web_config is not None and server.web_config.current().basic_auth_users else "",
            "" if store.path.exists() else "the file does not exist yet: families are served without samples",
        ) if part
    )
    click.echo(f"fraisier metrics: serving {store.path} on {server.url}" + (f" ({details})" if details else ""),
               err=True)
    stop.wait()
    server.shutdown()
    click.echo("fraisier metrics: stopped", err=True)
