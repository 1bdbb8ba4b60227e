"""Socket activation and readiness, as systemd does them (sd_listen_fds, sd_notify): no libsystemd needed."""

from __future__ import annotations

import logging
import os
import socket

from fraisier_textfile.errors import ServerStartError

log = logging.getLogger(__name__)


def listen_backlog() -> int:
    """The backlog Go servers such as node_exporter listen with: the system's ``somaxconn``. Python's
    socketserver listens with 5, so under a burst of connections the kernel drops SYNs and clients wait for
    their one-second retransmission."""
    try:
        with open("/proc/sys/net/core/somaxconn", "rb") as file:
            backlog = int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        return socket.SOMAXCONN
    # listen(2) keeps the backlog in 16 bits on older kernels; Go caps it the same way.
    return max(1, min(backlog, 65535))


SYSTEMD_FIRST_DESCRIPTOR = 3  # SD_LISTEN_FDS_START


def systemd_listening_socket() -> socket.socket | None:
    """The listening socket that systemd passed to this process (socket activation: ``LISTEN_PID`` is this
    process and ``LISTEN_FDS`` is 1, the socket is descriptor 3), or None when there is none. The variables
    are removed so that processes started from here do not take the socket for theirs. Raises
    ServerStartError when systemd passed something this server cannot serve from."""
    listen_pid = os.environ.get("LISTEN_PID")
    listen_fds = os.environ.get("LISTEN_FDS")
    if listen_pid is None or listen_fds is None:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if listen_pid.strip() != str(os.getpid()):
        return None  # meant for another process (the variables were inherited)
    where = "the socket passed by systemd"
    try:
        count = int(listen_fds)
    except ValueError:
        raise ServerStartError(where, 0, f"LISTEN_FDS is {listen_fds!r}, not a number of sockets") from None
    if count == 0:
        return None
    if count != 1:
        raise ServerStartError(
            where, 0, f"systemd passed {count} sockets; fraisier metrics serves one: give its .socket unit one "
            "ListenStream="
        )
    try:
        listening = socket.socket(fileno=SYSTEMD_FIRST_DESCRIPTOR)
    except OSError as error:
        raise ServerStartError(where, 0, f"descriptor 3 is not a socket ({error.strerror or error})") from None
    if listening.type != socket.SOCK_STREAM or not listening.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        listening.detach()
        raise ServerStartError(
            where, 0, "descriptor 3 is not a listening stream socket: use ListenStream= (not ListenDatagram= or "
            "Accept=yes) in the .socket unit"
        )
    listening.set_inheritable(False)
    return listening


def notify_systemd(state: str = "READY=1") -> bool:
    """Tell the service manager ``state`` (``READY=1``: started) on ``$NOTIFY_SOCKET``, as sd_notify(3) does,
    for ``Type=notify`` units. False (and nothing sent) when the variable is not set or the message cannot be
    sent: a server started by hand has no one to tell."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path  # "@name": the abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as notify:
            notify.sendto(state.encode(), address)
    except OSError as error:
        log.warning("cannot tell systemd %s on NOTIFY_SOCKET=%s: %s", state, path, error)
        return False
    return True
