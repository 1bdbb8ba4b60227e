"""``fraisier metrics``: the textfile served over HTTP for Prometheus (the server itself is ``serve/``)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from fraisier_textfile import preload
from fraisier_textfile.cli.group import Command, InvalidInput, Settings, library_errors, pass_settings

LOADED_AHEAD = ("fraisier_textfile.format", "fraisier_textfile.store", "fraisier_textfile.sources",
                "fraisier_textfile.serve")
"""What `fraisier metrics` loads before it serves (preload.py): every module a scrape may import."""

log = logging.getLogger(__name__)


@click.command(cls=Command)
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
@click.option("--max-connections", type=click.IntRange(min=0), default=512, show_default=True,
              help="Connections held at once, as Prometheus's --web.max-connections (never more than half the "
              "open-file limit allows). At the limit a new connection closes the one that has waited longest "
              "for its request. 0: as many as the open-file limit allows.")
@pass_settings
def metrics(settings: Settings, port: int, address: str, web_config_file: Path | None, max_requests: int,
            max_connections: int) -> None:
    """Serve TEXTFILE_DIR/fraisier.prom over HTTP at /metrics, for Prometheus to scrape.

    For hosts without node_exporter (with it, point its textfile collector at TEXTFILE_DIR instead). A scrape
    shows what the file holds, with the deployments in progress counted live; the file is re-read only when
    it changed. What Fraisier's state database holds that is new, and events that writers handed over and no
    merge has applied yet (writers that exited while the lock was busy), are merged at the scrape first, if the
    lock is free. Until a fraisier process writes the file, every family is served without samples. There is a
    landing page at / with a summary of the deployments (as `fraisier textfile summary`). SIGTERM or SIGINT
    stop it (exit 0); SIGHUP re-reads the web config (systemd's ExecReload) and it goes on serving.

    Started by a systemd .socket unit (LISTEN_FDS, LISTEN_PID), it serves the socket it is handed, TCP or Unix
    (ListenStream=/run/fraisier-metrics.sock, or @name), and ignores --address and --port; contrib/systemd/ has
    the units. Otherwise it listens with the system's backlog (/proc/sys/net/core/somaxconn), as node_exporter
    does.

    Against clients that hold connections and send nothing: it raises its soft open-file limit to the hard
    one at start (as Go programs do), holds at most --max-connections, and closes a connection whose TLS
    handshake and request have not arrived in full 10 s after it connected (30 s after the last response on
    a kept-alive connection), however slowly the bytes trickle in.

    --web-config-file takes the web config file of Prometheus exporters (exporter-toolkit): TLS, client
    certificates, basic auth. Paths in it are relative to its directory; it is re-read when it changes. A new
    config that would turn authentication off (an empty or half-written file, every user removed), turn TLS on
    or off, or change its client_auth_type, client_ca_file, min_version or max_version is refused and logged
    at error level: the last good config stays in force until a restart.

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
    import os
    import signal

    from fraisier_textfile.serve.activation import notify_systemd, systemd_listening_socket
    from fraisier_textfile.serve.descriptors import raise_descriptor_limit
    from fraisier_textfile.serve.server import serve_textfile

    if not address.strip():
        raise InvalidInput("--address is empty: give localhost, a host's address, or 0.0.0.0 for every interface")
    # The main thread waits on the signal wake-up descriptor, and acts on the signal numbers written there, not
    # on what a handler did: Python runs a handler only in the main thread, so a signal that reaches another
    # thread (the kernel may give it to any), or reaches this one just before it blocks, would leave the handler
    # waiting until something woke this thread, and a SIGTERM unheeded until systemd's SIGKILL. The signal
    # writes its number to the descriptor itself, in whichever thread it lands.
    wake_reader, wake_writer = os.pipe()
    os.set_blocking(wake_writer, False)
    signal.set_wakeup_fd(wake_writer, warn_on_full_buffer=False)

    def noted(signal_number: int, frame: object) -> None:
        """Acted on by the loop below, from the wake-up descriptor."""

    # Before the server starts: a SIGTERM during start-up is a clean stop too, and a SIGHUP (systemd's
    # ExecReload) never kills it.
    for signal_number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signal_number, noted)
    store = settings.store(fraisier_state=True)  # each scrape takes what Fraisier's state holds that is new
    # A server outlasts installations (`pip install -U` under it): what a scrape may import is loaded now.
    preload.load(LOADED_AHEAD)
    before, after = raise_descriptor_limit()
    if after != before:
        log.debug(f"raised the soft limit on open files from {before} to {after}, the hard limit")
    with library_errors():
        listening_socket = systemd_listening_socket()
        server = serve_textfile(
            store, port=port, address=address, web_config_file=web_config_file, max_requests=max_requests,
            listening_socket=listening_socket, max_connections=max_connections,
        )
    details = ", ".join(
        part for part in (
            "socket from systemd" if listening_socket is not None else "",
            "TLS" if server.tls else "",
            "basic auth" if server.web_config is not None and server.web_config.current().basic_auth_users else "",
            "" if store.path.exists() else "the file does not exist yet: families are served without samples",
        ) if part
    )
    log.info(f"fraisier metrics: serving {store.path} on {server.location}" + (f" ({details})" if details else ""))
    if max_connections and server.connection_limit < max_connections:
        log.warning(f"--max-connections {max_connections} lowered to {server.connection_limit}: the open-file "
                    f"limit ({after}) allows no more; raise LimitNOFILE= in the unit")
    # Type=notify: systemd counts the service started, and lets a reload (SIGHUP) through, only from here.
    notify_systemd("READY=1")
    while True:
        received = os.read(wake_reader, 512)
        if signal.SIGTERM in received or signal.SIGINT in received:
            break
        if signal.SIGHUP in received:
            log.info("SIGHUP: reloading the web config")
            server.reload_web_config()
    signal.set_wakeup_fd(-1)
    os.close(wake_writer)
    os.close(wake_reader)
    server.shutdown()
    log.info("fraisier metrics: stopped")
