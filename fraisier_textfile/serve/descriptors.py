"""How many descriptors ``fraisier metrics`` may use, and how many connections that leaves room for.

The limit on open files is the whole process's, so this arithmetic is apart from the serving loop that lives
within it: the soft limit is raised to the hard one once at start (as Go's runtime does), and the connection
table is sized from what is left under it."""

from __future__ import annotations

import logging
import os
import resource

log = logging.getLogger(__name__)


# Descriptors kept out of the connections' share: the textfile, the markers' directory, the log, Python's own.
RESERVED_DESCRIPTORS = 32


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise this process's soft limit on open descriptors (RLIMIT_NOFILE) to its hard limit, as Go's runtime
    does for every Go program since Go 1.19, node_exporter included (go.dev/issue/46279). systemd gives every
    service a soft limit of 1024, kept low only for programs that use select(2), and a hard limit of 524288
    for programs that do not: this one waits with poll(2). Returns the soft limit before and after; never
    raises (a limit that cannot be raised is left as it was). For ``fraisier metrics``, not for a library
    call: the limit is the whole process's."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return 0, 0
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return soft, soft  # Linux refuses an unlimited soft limit for descriptors; nothing to gain otherwise
    try:
        # glibc makes this prlimit64(2), which systemd's @system-service filter allows (setrlimit(2) is in
        # @resources, which the unit denies).
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as error:
        log.debug("cannot raise the soft limit on open files from %d to %d: %s", soft, hard, error)
        return soft, soft
    return soft, hard


def connection_limit(max_connections: int) -> int:
    """How many connections a server keeps at once: ``max_connections`` (0: no limit of its own), but never
    more than half the descriptors this process has left under its soft limit, with a reserve for the files
    a scrape opens. Half, because a connection closed to make room for another holds its descriptor until
    its thread has let go of it: live and closing connections together stay within the budget."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        soft = 1024
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_now = 16
    budget = (soft - open_now - RESERVED_DESCRIPTORS) // 2
    if max_connections > 0:
        budget = min(budget, max_connections)
    return max(1, budget)
