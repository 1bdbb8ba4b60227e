"""The processes bench_floor.py starts: ``python _floor_workers.py NAME ARGUMENTS...``; each prints one JSON
line with what it measured (the race workers first print ``ready`` and wait for a line on stdin).

Run by the interpreter of the installed package (see _common.install_package), from a directory that holds
no source tree, so that what is timed is the package as users run it. Only the standard library is imported
before the timed parts, apart from the package itself.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

EVENT = ("bare_metal", "api", "success", 42.0)


def _store_class() -> Any:
    """Fraisier's TextfileStore, from the package's face: the race also runs a baseline installed from an older
    revision, whose modules were laid out otherwise."""
    import fraisier_textfile

    return fraisier_textfile.TextfileStore


def status_kib(field: str) -> int | None:
    """A memory figure of this process from /proc/self/status (VmRSS: now; VmHWM: the peak), in KiB."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_kib() -> int:
    """The process's peak resident set size (since the last reset_peak_rss), in KiB."""
    return status_kib("VmHWM") or int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux 4.0+), so that the next peak is that of what follows:
    without it, a peak reached during the imports would hide a smaller one during the merge."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return status_kib("VmHWM") is not None


def report(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


def features() -> dict[str, Any]:
    """What this version of the package offers, for the parts of the benchmark that depend on it."""
    import inspect

    from fraisier_textfile import MetricsRecorder
    TextfileStore = _store_class()

    parameters = sorted(inspect.signature(MetricsRecorder.__init__).parameters)[1:]
    return {
        "merge_or_hand_over": callable(getattr(TextfileStore, "merge_or_hand_over", None)),
        "recorder_budget": [name for name in parameters if "budget" in name],
        "merge_timeout": "timeout" in inspect.signature(TextfileStore.merge).parameters,
        "recorder_parameters": parameters,
        "get_metrics_summary": callable(getattr(MetricsRecorder, "get_metrics_summary", None)),
    }


def fresh(directory: str, trace: str = "") -> None:
    """One event merged by a recorder made in this new process: construction and the first read included.
    The imports are not timed, the recorder's module among them (fraisier_textfile loads it, and
    prometheus_client with it, on first use of MetricsRecorder)."""
    import fraisier_textfile
    from fraisier_textfile import MetricsRecorder  # noqa: F401

    imported = time.perf_counter()
    if trace:
        import tracemalloc

        tracemalloc.start()
    peak_reset = reset_peak_rss()
    before = status_kib("VmRSS") if peak_reset else peak_rss_kib()
    started, started_cpu = time.perf_counter(), time.process_time()
    recorder = fraisier_textfile.MetricsRecorder(directory)
    recorder.record_deployment_complete(*EVENT)
    merged, merged_cpu = time.perf_counter(), time.process_time()
    result = {
        "start_to_imported_seconds": imported - STARTED,
        "merge_seconds": merged - started,
        "merge_cpu_seconds": merged_cpu - started_cpu,
        "rss_before_kib": before,
        "peak_rss_after_kib": peak_rss_kib(),
        "peak_reset": peak_reset,
        "pending_after": bool(getattr(recorder, "pending", False)),
    }
    if trace:
        result["tracemalloc_peak_bytes"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    report(result)


def imports() -> None:
    """Only what ``fresh`` imports: the baseline its memory and start-up are compared with."""
    import fraisier_textfile  # noqa: F401
    from fraisier_textfile import MetricsRecorder  # noqa: F401

    report({"start_to_imported_seconds": time.perf_counter() - STARTED, "peak_rss_kib": peak_rss_kib()})


def floor_once(path: str, keep_replaced: bool = False) -> tuple[float, float]:
    """The I/O floor of a merge: read the file, write a temporary beside it, fsync, rename it over the file. Its
    wall time and the CPU time this process spent on it.

    ``keep_replaced``: the floor at its best, as the store does it. The last descriptor of a file a rename unlinks
    frees its blocks; here the file read stays open until after the rename, so that the rename only moves a name,
    and is closed once the time is taken (the store closes it in another thread, after its caller has its
    answer)."""
    started, started_cpu = time.perf_counter(), time.process_time()
    file = open(path, "rb")  # noqa: SIM115 (closed below, after the rename or before it)
    try:
        data = file.read()
        if not keep_replaced:
            file.close()
        temporary = path + ".floor.tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
        timed = time.perf_counter() - started, time.process_time() - started_cpu
    finally:
        file.close()
    return timed


def settle() -> None:
    """Wait, outside any timed span, for what the store does in other threads once its caller has its answer (the
    versions its merges replaced closed, their blocks freed): left running, it would overlap the floor timed next
    and slow the peer, not us. Versions of the package without that work have nothing to wait for."""
    try:
        from fraisier_textfile.store import process
    except ImportError:
        return
    wait = getattr(process, "wait_for_closes", None)
    if wait is not None:
        wait(5.0)
    background = getattr(process, "background", None)
    if background is not None and hasattr(background, "wait"):
        background.wait(5.0)


def warm(directory: str, floor_path: str, repetitions: str) -> None:
    """A recorder that keeps merging one event at a time, interleaved with the floor on a copy of the file: each
    warm merge right after a floor (the floor and the floor at its best by turns), each floor right after a warm
    merge. Either runs 100-170 µs slower right after the other than right after itself (the other file, the
    other buffers: bench/README.md), so each pays it once; an order that put every floor after another floor of
    the same file gave the floor that advantage alone."""
    from fraisier_textfile import MetricsRecorder

    recorder = MetricsRecorder(directory)
    recorder.record_deployment_complete(*EVENT)  # the first merge reads the file; the next ones are warm
    settle()
    floor_once(floor_path)
    warm_samples: list[tuple[float, float]] = []
    floor_samples: list[tuple[float, float]] = []
    kept_samples: list[tuple[float, float]] = []
    for number in range(int(repetitions)):
        if number % 2:
            kept_samples.append(floor_once(floor_path, keep_replaced=True))
        else:
            floor_samples.append(floor_once(floor_path))
        started, started_cpu = time.perf_counter(), time.process_time()
        recorder.record_deployment_complete(*EVENT)
        warm_samples.append((time.perf_counter() - started, time.process_time() - started_cpu))
        settle()
    report({"warm_seconds": [wall for wall, _ in warm_samples], "warm_cpu_seconds": [cpu for _, cpu in warm_samples],
            "floor_seconds": [wall for wall, _ in floor_samples],
            "floor_cpu_seconds": [cpu for _, cpu in floor_samples],
            "floor_kept_seconds": [wall for wall, _ in kept_samples],
            "floor_kept_cpu_seconds": [cpu for _, cpu in kept_samples]})


def fresh_floor(path: str, keep_replaced: str = "") -> None:
    """The I/O floor as a new process pays it, after the same imports as ``fresh``: its first read of the file
    faults in fresh memory, which a process that read it before (``warm``, where the floor is timed) reuses.
    Then, timed apart, an fsync of the directory, which the store does after its rename and the floor does
    not: shown beside, never added to the floor. ``keep_replaced`` (non-empty): see floor_once."""
    import fraisier_textfile  # noqa: F401
    from fraisier_textfile import MetricsRecorder  # noqa: F401

    floor_seconds, floor_cpu_seconds = floor_once(path, keep_replaced=bool(keep_replaced))
    started = time.perf_counter()
    descriptor = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    report({"floor_seconds": floor_seconds, "floor_cpu_seconds": floor_cpu_seconds,
            "directory_fsync_seconds": time.perf_counter() - started})


class DesignFacts:
    """What the design floor knows before its timed span, as a merge compiled for Fraisier's families would: the
    schema's fingerprint, the three families the event touches (names, label order, bucket bounds), the statuses
    whose series the event creates at 0, and the store's names and modes. Read from the package's data once its
    modules are imported (they are, by the same imports as ``fresh``): no code of the package runs on the timed
    path."""

    __slots__ = ("active", "deployments", "durations", "fingerprint", "handovers", "last", "lock_name", "markers",
                 "name", "statuses", "temporary_prefix")

    def __init__(self) -> None:
        from fraisier_textfile import catalogue
        from fraisier_textfile.store import files, handovers, lock, markers

        self.fingerprint = catalogue.SCHEMA.fingerprint
        self.statuses = catalogue.DEPLOYMENT_STATUSES
        # (name, label names) of the counter and the gauge; the histogram's also its bounds and their le texts.
        self.deployments = (catalogue.DEPLOYMENTS.name, catalogue.DEPLOYMENTS.labels)
        self.last = (catalogue.LAST_DEPLOYMENT.name, catalogue.LAST_DEPLOYMENT.labels)
        family = catalogue.DEPLOYMENT_DURATION
        self.durations = (family.name, family.labels, (*family.buckets, float("inf")), family.bucket_bounds)
        self.active = catalogue.ACTIVE_DEPLOYMENTS.name
        self.name = files.TEXTFILE_NAME
        self.temporary_prefix = files.TEMPORARY_PREFIX
        self.lock_name = files.TEXTFILE_NAME + lock.LOCK_SUFFIX
        self.markers = markers.MARKER_DIRECTORY
        self.handovers = handovers.HANDOVER_DIRECTORY


class NotTheBenchFile(Exception):
    """The design floor merges the file bench_floor makes, as the store wrote it: anything else (a series missing, a
    marker or hand-over directory, a bookkeeping line of theirs, a file not as its layout line claims) is refused,
    never merged differently from the store."""


META = b"# fraisier_textfile "
LAYOUT = META + b"layout: "
UPDATED = META + b"updated-"
SECOND = 1_000_000_000
CLOCK_TOLERANCE = 300.0
"""rules.CLOCK_TOLERANCE: a stored last-deployment time further ahead of the clock than this is replaced."""
_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_OPEN_LOCK = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_OPEN_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def fresh_design_floor(directory: str) -> None:
    """The design floor of the fresh merge: ``EVENT`` merged into the textfile of ``directory`` in plain Python, in a
    new process after the same imports as ``fresh`` (not timed), doing what a merge of this store's design must do
    at least and producing the same bytes and seal as the store's merge (tests/test_bench.py compares them).

    Timed: open the directory (O_DIRECTORY|O_NOFOLLOW); open the lock file through it, flock; open the file through
    it (O_NOFOLLOW), fstat, read it whole, fstat again (the seal's look); look for the marker and hand-over
    directories (none: the floor refuses a file that has either); take the layout line's words, the places of the
    blocks and segments from them; find the event's series lines and their zero siblings' (the counter, the
    histogram's buckets, sum and count, the last-deployment gauge), add the event's values by the store's rules
    (rules.py: summed, bucket-wise, the largest time unless the stored one is too far ahead); check the claimed
    CRC-32 of each segment edited, then CRC-32 it edited; the new layout line; the minutes of the series touched
    in their families' update-times lines, edited in place (series_times.py); a temporary created through the
    directory (O_EXCL|O_NOFOLLOW, mode 0644 by fchmod), the pieces written by writev, sealed (vouching.seal),
    fsynced, renamed over the file through the directory; unlock, close.

    Left out, as the store does them and a merge need not, or not here: the checked walk of the directory's path
    from / (walk.py: one open here); signal handlers held back (signals.py); the look that the lock file is still
    the one locked (lock.py), after the flock and before the rename; the checksums of the headers, which the store
    writes anew and the floor copies; the check that the headers' HELP and TYPE are the schema's; the lifecycle but
    for the update times: the series bound's check (the event's series exist), histogram migration (a file as the
    store writes it needs none), expiry (refused: the bench sets no FRAISIER_EXPIRE_AFTER); the hand-overs' and
    markers' accounting and the litter look (neither directory exists; the floor refuses a file whose bookkeeping
    names either); the writeback started before the fsync; the directory's fsync after the rename and the close of
    the file replaced, which the store makes in another thread once its caller has its answer (here after the
    timed span). An unsealed file is checked whole before anything is taken from it, where the store checks it
    while the disk writes."""
    import fraisier_textfile  # noqa: F401
    from fraisier_textfile import MetricsRecorder  # noqa: F401

    facts = DesignFacts()
    if os.environ.get("FRAISIER_EXPIRE_AFTER"):
        raise NotTheBenchFile("an expiring merge sweeps every family: the design floor does not")
    started, started_cpu = time.perf_counter(), time.process_time()
    replaced = merge_as_designed(directory, facts)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    os.close(replaced)
    report({"seconds": seconds, "cpu_seconds": cpu_seconds})


def merge_as_designed(directory: str, facts: DesignFacts) -> int:
    """``EVENT`` merged into the textfile of ``directory`` (see fresh_design_floor); the descriptor of the file
    replaced, still open, so that the rename does not free its blocks (the caller closes it)."""
    import fcntl

    now = time.time()
    textfile = os.open(directory, _OPEN_DIRECTORY)
    try:
        lock = open_lock(facts.lock_name, textfile)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return merge_locked(textfile, facts, now)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        finally:
            os.close(lock)
    finally:
        os.close(textfile)


def open_lock(name: str, textfile: int) -> int:
    """The lock file, made group-writable (0664) when this process makes it, as the store does."""
    try:
        return os.open(name, _OPEN_LOCK, dir_fd=textfile)
    except FileNotFoundError:
        descriptor = os.open(name, _OPEN_LOCK | os.O_CREAT | os.O_EXCL, 0o664, dir_fd=textfile)
        os.fchmod(descriptor, 0o664)
        return descriptor


def merge_locked(textfile: int, facts: DesignFacts, now: float) -> int:
    """Under the lock: the file read, ``EVENT`` applied, the new version renamed over it. Returns the descriptor
    of the version replaced, still open."""
    import stat
    import zlib

    descriptor = os.open(facts.name, _OPEN_READ, dir_fd=textfile)
    try:
        before = os.fstat(descriptor)
        if not stat.S_ISREG(before.st_mode) or before.st_nlink != 1:
            raise NotTheBenchFile("not a regular file of one name")
        data = os.read(descriptor, before.st_size)
        after = os.fstat(descriptor)
        if (after.st_size, after.st_mtime_ns) != (len(data), before.st_mtime_ns) or len(data) != before.st_size:
            raise NotTheBenchFile("changed while it was read")
        for name in (facts.markers, facts.handovers):
            try:
                os.close(os.open(name, _OPEN_DIRECTORY, dir_fd=textfile))
            except FileNotFoundError:
                continue
            raise NotTheBenchFile(f"{name} exists: its accounting is not the floor's")

        # The meta lines: the layout line, and the update-times line of each family (value start, end).
        view = memoryview(data)
        layout = (0, 0)
        times: dict[bytes, tuple[int, int]] = {}
        position = 0
        while data.startswith(META, position):
            end = data.index(b"\n", position)
            if data.startswith(LAYOUT, position):
                layout = (position + len(LAYOUT), end)
            elif data.startswith(UPDATED, position):
                colon = data.index(b": ", position, end)
                times[data[position + len(UPDATED) : colon]] = (colon + 2, end)
            else:
                raise NotTheBenchFile(f"a bookkeeping line the floor does not keep: {data[position:end][:60]!r}")
            position = end + 1
        line = str(view[layout[0] : layout[1]], "ascii")
        words = line.split(" ")
        if words[0] != facts.fingerprint:
            raise NotTheBenchFile("not laid out with this schema")

        # Each block's place from the layout line: its word's number, its body's segments (start, length, crc). A
        # sealed file is taken as laid out: its words are read up to the last family the event touches.
        sealed = before.st_mtime_ns % SECOND == zlib.crc32(line.encode()) % 999_999_999 + 1
        touched = {facts.deployments[0], facts.durations[0], facts.last[0]}
        blocks: dict[str, tuple[int, list[tuple[int, int, int]]]] = {}
        claims: list[tuple[int, int, int]] = []
        for number in range(1, len(words)):
            name, header, *body = words[number].split("/")
            segments = []
            for text in body if header == "r" else [header, *body]:
                length_text, _, crc_text = text.partition(".")
                segments.append((position, int(length_text), int(crc_text, 16)))
                position += int(length_text)
            if header != "r":
                claims.append(segments.pop(0))
            blocks[name] = (number, segments)
            claims += segments
            if sealed and touched <= blocks.keys():
                break
        else:
            if position != len(data):
                raise NotTheBenchFile("not laid out as its layout line says")
        if facts.active in blocks or not touched <= blocks.keys():
            raise NotTheBenchFile("an active-deployments gauge, or a family of the event's missing")
        if not sealed:  # checked whole before anything is taken from it
            for start, length, crc in claims:
                if zlib.crc32(view[start : start + length]) != crc:
                    raise NotTheBenchFile("not as its layout line claims")
            for start, end in times.values():
                str(view[start:end], "utf-8")

        # The event's edits of the file's bytes, by family: (start, end, replacement).
        provider, fraise_type, status, duration = EVENT
        edited: dict[str, list[tuple[int, int, bytes]]] = {}
        name, labels = facts.deployments
        found = Lines(data, blocks[name][1])
        edits = edited[name] = []
        for other in facts.statuses:  # the event's series and its siblings, which it creates at 0: they exist
            start, end, value = found.value(series(name, labels, provider=provider, status=other,
                                                   fraise_type=fraise_type))
            if other == status:
                edits.append((start, end, summed(value, 1.0)))
        name, labels, bounds, les = facts.durations
        found = Lines(data, blocks[name][1])
        edits = edited[name] = []
        for other in facts.statuses:
            pairs = label_pairs(labels, provider=provider, status=other)
            if other == status:
                for bound, le in zip(bounds, les):
                    start, end, value = found.value(f'{name}_bucket{{{pairs},le="{le}"}}')
                    edits.append((start, end, summed(value, 1.0 if duration <= bound else 0.0)))
                start, end, value = found.value(f"{name}_sum{{{pairs}}}")
                edits.append((start, end, summed(value, duration)))
            start, end, value = found.value(f"{name}_count{{{pairs}}}")
            if other == status:
                edits.append((start, end, summed(value, 1.0)))
        name, labels = facts.last
        start, end, value = Lines(data, blocks[name][1]).value(
            series(name, labels, provider=provider, fraise_type=fraise_type, status=status))
        edits = edited[name] = []
        # rules.apply_changes: the later time wins, unless the stored one is too far ahead of a clock that is not
        # itself behind the file's mtime (rules.clock_is_behind).
        behind = before.st_mtime_ns / 1e9 - now > CLOCK_TOLERANCE
        if now > value or value != value or (not behind and not value <= now + CLOCK_TOLERANCE):
            edits.append((start, end, repr(now).encode()))

        # The segments edited: each checked against its claim (a sealed file's were not), its new CRC-32 in the
        # layout line.
        for name, edits in edited.items():
            edits[:] = [edit for edit in edits if data[edit[0] : edit[1]] != edit[2]]  # as read: not spliced
            number, segments = blocks[name]
            fields = words[number].split("/")
            next_edit = 0
            for index, (start, length, crc) in enumerate(segments):
                if next_edit == len(edits):
                    break
                end = start + length
                inside = []
                while next_edit < len(edits) and edits[next_edit][0] < end:
                    inside.append(edits[next_edit])
                    next_edit += 1
                if not inside:
                    continue
                if sealed and zlib.crc32(view[start:end]) != crc:
                    raise NotTheBenchFile("a segment edited is not as its layout line claims")
                length += sum(len(replacement) - (stop - at) for at, stop, replacement in inside)
                crc = 0
                for piece in spliced(view, start, end, inside):
                    crc = zlib.crc32(piece, crc)
                fields[2 + index] = f"{length}.{crc:08x}"
            words[number] = "/".join(fields)
        new_line = " ".join(words)

        # The update times (series_times.SeriesTimes.touch, in place): each series touched and its siblings, the
        # minute moved only forward, a series without one added at the line's end.
        minute = str(int(now // 60)).encode()
        times_edits: list[tuple[int, int, bytes]] = [(layout[0], layout[1], new_line.encode())]
        keys = {
            facts.deployments[0]: [f"{provider},{other},{fraise_type}" for other in facts.statuses],
            facts.durations[0]: [f"{provider},{other}" for other in facts.statuses],
            facts.last[0]: [f"{provider},{fraise_type},{status}"],
        }
        for family, family_keys in keys.items():
            value_start, value_end = times.get(family.encode(), (0, 0))
            space = data.find(b" ", value_start, value_end)
            if not data[value_start : value_end if space < 0 else space].isdigit():
                raise NotTheBenchFile(f"no update-times line of {family} to edit in place")
            appended = b""
            for key in family_keys:
                needle = f" {key}=".encode()
                at = data.find(needle, value_start, value_end)
                if at < 0:
                    if needle + minute not in appended:
                        appended += needle + minute
                    continue
                at += len(needle)
                stop = data.find(b" ", at, value_end)
                stop = value_end if stop < 0 else stop
                if not data[at:stop].isdigit() or int(data[at:stop]) < int(minute):
                    times_edits.append((at, stop, minute))
            if appended:
                times_edits.append((value_end, value_end, appended))
        every_edit = sorted(times_edits + [edit for edits in edited.values() for edit in edits])
        write_as_designed(textfile, facts, spliced(view, 0, len(data), every_edit), new_line)
        return descriptor
    except BaseException:
        os.close(descriptor)
        raise


class Lines:
    """The sample lines of one block's body, found by their series' keys: each search from the last line found
    (the lines of one series are next to each other), then from the body's start."""

    __slots__ = ("data", "end", "hint", "start")

    def __init__(self, data: bytes, segments: list[tuple[int, int, int]]) -> None:
        self.data = data
        self.start = segments[0][0] - 1  # the newline that ends the header: every line then follows a newline
        self.end = segments[-1][0] + segments[-1][1]
        self.hint = self.start

    def value(self, key: str) -> tuple[int, int, float]:
        """Where the value of ``key``'s line is (start, end) and what it is."""
        needle = b"\n" + key.encode() + b" "
        at = self.data.find(needle, self.hint, self.end)
        if at < 0:
            at = self.data.find(needle, self.start, self.end)
            if at < 0:
                raise NotTheBenchFile(f"no series {needle[1:-1]!r}")
        self.hint = at
        start = at + len(needle)
        end = self.data.index(b"\n", start)
        return start, end, float(self.data[start:end])


def label_pairs(labels: tuple[str, ...], **values: str) -> str:
    """A series' labels as the store writes them: in the family's order (the event's values need no escape)."""
    return ",".join(f'{label}="{values[label]}"' for label in labels)


def series(name: str, labels: tuple[str, ...], **values: str) -> str:
    return f"{name}{{{label_pairs(labels, **values)}}}"


def summed(value: float, amount: float) -> bytes:
    """A counter's or a bucket's value plus ``amount``, as format_float writes it; a value that cannot be summed
    honestly is refused, as rules._summed refuses it."""
    total = value + amount
    if not 0.0 <= value < float("inf") or total == float("inf"):
        raise NotTheBenchFile(f"{value} cannot be summed")
    return repr(total).encode()


def spliced(view: memoryview, start: int, end: int, edits: list[tuple[int, int, bytes]]) -> list[bytes | memoryview]:
    """``view[start:end]`` with ``edits`` made (sorted, within it, each (start, end, replacement)), in pieces: the
    unchanged runs are slices of the file read, never copied."""
    pieces: list[bytes | memoryview] = []
    cursor = start
    for at, stop, replacement in edits:
        pieces += (view[cursor:at], replacement)
        cursor = stop
    pieces.append(view[cursor:end])
    return pieces


def write_as_designed(textfile: int, facts: DesignFacts, pieces: list[bytes | memoryview], line: str) -> None:
    """Write ``pieces`` as a temporary beside the file (O_EXCL|O_NOFOLLOW through the directory, 0644 whatever
    the umask), seal it with its layout line's value (vouching.seal), fsync, rename it over the file."""
    import zlib

    temporary = facts.temporary_prefix + os.urandom(8).hex()
    descriptor = os.open(temporary, _CREATE, 0o644, dir_fd=textfile)
    try:
        os.fchmod(descriptor, 0o644)
        left = sum(len(piece) for piece in pieces)
        while left:
            written = os.writev(descriptor, pieces)
            left -= written
            pieces = drop(pieces, written)
        # The seal after the last write, which sets the mtime again: its nanoseconds, its second the kernel's.
        status = os.fstat(descriptor)
        seal = zlib.crc32(line.encode()) % 999_999_999 + 1
        os.utime(descriptor, ns=(status.st_atime_ns, status.st_mtime_ns - status.st_mtime_ns % SECOND + seal))
        os.fsync(descriptor)
        os.rename(temporary, facts.name, src_dir_fd=textfile, dst_dir_fd=textfile)
    except BaseException:
        os.unlink(temporary, dir_fd=textfile)
        raise
    finally:
        os.close(descriptor)


def floor(path: str, repetitions: str) -> None:
    report({"floor_seconds": [floor_once(path)[0] for _ in range(int(repetitions))]})


def race(directory: str, events: str, mode: str, wait: str) -> None:
    """Record ``events`` events, each written out before the next, once the parent says go.

    mode ``recorder``: ``MetricsRecorder(directory)`` with auto_flush, as shipped; ``recorder_durable``: the
    same with a lock-wait budget that is never spent, so that every hand-over is fsynced (once a process has
    spent its budget, 1 s by default, refilled at 1 s a minute, its hand-overs skip their fsyncs until it refills:
    the recorder's rows count those, ``unfsynced``); ``merge``: the store's ``merge`` of
    each event, waiting for the lock (the seed's way); ``hand_over``: the store's
    ``merge_or_hand_over(changes, wait)``."""
    from fraisier_textfile import MetricsRecorder, changes
    TextfileStore = _store_class()

    handed_over = unfsynced = 0
    if mode in ("recorder", "recorder_durable"):
        recorder = MetricsRecorder(directory)
        if mode == "recorder_durable":
            recorder.lock_wait_budget = 1e9
        # What the call did, read around it: the recorder's own count where it has one (an attribute read),
        # else its summary (a revision of before), which builds a dict and a path.
        counted: Any = getattr(recorder, "get_metrics_summary", None)
        if hasattr(type(recorder), "handed_over_events"):
            def counted() -> dict[str, int]:
                return {"handed_over_events": recorder.handed_over_events}
        try:  # what is left of the process's budget, where this version has one that refills
            from fraisier_textfile.recorder import process as recorder_process

            budget_left = recorder_process.process_budget.left
        except (ImportError, AttributeError):
            budget_left = None

        def record() -> bool | None:
            nonlocal unfsynced
            spent = budget_left is not None and budget_left(recorder.lock_wait_budget) <= 0
            before = counted()["handed_over_events"] if counted else None
            recorder.record_deployment_complete(*EVENT)
            handed = None if before is None else counted()["handed_over_events"] != before
            unfsynced += bool(handed and spent)
            return handed

    else:
        store = TextfileStore(directory)

        def record() -> bool | None:
            nonlocal handed_over
            pending = changes.Changes()
            changes.deployment_complete(pending, *EVENT)
            if mode == "merge":
                store.merge(pending)
                return False
            if not store.merge_or_hand_over(pending, float(wait)):
                handed_over += 1
                return True
            return False

    summary_of = getattr(recorder, "get_metrics_summary", None) if mode.startswith("recorder") else None
    report_race(record, int(events), {"handed_over": lambda: handed_over, "unfsynced": lambda: unfsynced},
                summary_of)


def report_race(
    record: Any, events: int, counts: dict[str, Any], summary_of: Any = None) -> None:
    """Say ready, wait for go, then call ``record`` ``events`` times, each call timed (wall, own CPU, waiting
    for a CPU), and report: the same loop for our writers and the floors, so that their figures compare.
    ``record`` may return whether the call handed its event over (True) or merged (False)."""
    print("ready", flush=True)
    sys.stdin.readline()
    latencies: list[float] = []
    cpu: list[float] = []
    queued: list[float | None] = []
    handed: list[bool | None] = []
    errors: dict[str, int] = {}
    timeouts = 0
    started = time.time()  # wall clock: comparable across processes
    for _ in range(events):
        # The run queue's count is read before the clock starts, as it is read after it stops: the read of
        # /proc is the bench's, not the writer's.
        call_queued = run_queue_wait()
        call, call_cpu = time.perf_counter(), time.process_time()
        outcome = None
        try:
            outcome = record()
        except Exception as error:  # counted: the point is what a caller would see
            errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
            timeouts += isinstance(error, TimeoutError) or type(error).__name__ == "LockTimeoutError"
        latencies.append(time.perf_counter() - call)
        cpu.append(time.process_time() - call_cpu)
        handed.append(outcome)
        now_queued = run_queue_wait()
        queued.append(None if now_queued is None or call_queued is None else now_queued - call_queued)
    finished = time.time()
    summary = summary_of() if summary_of is not None else {}
    report(
        {
            "started": started,
            "finished": finished,
            "latencies": latencies,
            "cpu_seconds": cpu,
            "run_queue_seconds": queued,
            "handed_over_calls": handed,
            "errors": errors,
            "lock_timeouts": timeouts,
            **{name: count() for name, count in counts.items()},
            "summary": {key: str(value) for key, value in summary.items()},
        }
    )


def race_floor(path: str, events: str, series: str) -> None:
    """The physical floor of one racing event, in plain Python (no package imported): what a store must at
    least do to count one event durably in the shared file. Under an exclusive flock of the lock file: one open
    and one read of the whole file, the one number found and raised by one, the file written as a temporary
    beside it in one write (the unchanged parts are not copied: writev of views), fsync, renamed over the
    file, the directory fsynced (so that the rename survives a power loss), the lock released. The lock file
    and the directory are opened once per process, as a long-lived store keeps them."""
    import fcntl

    key = series.encode() + b" "
    temporary = path + ".floor.tmp"
    lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    directory = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)

    def record() -> bool:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            descriptor = os.open(path, os.O_RDONLY)
            try:
                data = os.read(descriptor, os.fstat(descriptor).st_size)
            finally:
                os.close(descriptor)
            start = data.index(key) + len(key)
            end = data.index(b"\n", start)
            value = float(data[start:end]) + 1
            number = b"%d" % value if value.is_integer() else repr(value).encode()
            view = memoryview(data)
            write_durably(temporary, [view[:start], number, view[end:]])
            os.rename(temporary, path)
            os.fsync(directory)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        return False

    report_race(record, int(events), {"handed_over": lambda: 0})


def write_durably(temporary: str, parts: list[bytes | memoryview]) -> None:
    """``parts`` written to ``temporary`` in one writev (but for a short write), then fsynced."""
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        left = sum(len(part) for part in parts)
        while left:
            written = os.writev(descriptor, parts)
            left -= written
            parts = drop(parts, written)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def drop(parts: list[bytes | memoryview], count: int) -> list[bytes | memoryview]:
    """The buffers left of ``parts`` once its first ``count`` bytes were written."""
    while count and parts:
        if count >= len(parts[0]):
            count -= len(parts[0])
            parts = parts[1:]
        else:
            parts = [memoryview(parts[0])[count:], *parts[1:]]
            count = 0
    return parts


def race_handover_floor(directory: str, events: str) -> None:
    """The floor of a hand-over, in plain Python: each event a small file of this writer's own in a shared
    directory, with no lock and no read: written as a temporary, renamed to its name, fsynced, the directory
    fsynced (after the rename, as the store does: on ext4 the file's fsync commits the rename too). What a writer
    that hands its event over instead of merging pays at least."""
    prefix = os.path.join(directory, f"{os.getpid()}-")
    payload = b'{"deployments": [["bare_metal", "api", "success", 42.0]]}\n'
    handle = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    sequence = 0

    def record() -> bool:
        nonlocal sequence
        sequence += 1
        temporary = f"{prefix}{sequence}.tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(descriptor, payload)
            os.rename(temporary, f"{prefix}{sequence}.json")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.fsync(handle)
        return True

    report_race(record, int(events), {"handed_over": lambda: sequence})


GROUP_APPLIED = b"# group-floor-applied:"
"""The group-commit floor's bookkeeping line, last in its copy of the file: the hand-overs it holds, listed until
their files are gone (as the store's ``applied-handovers``), so that none is counted twice."""
GROUP_HANDOVERS = ".group-floor-handover"


def race_group_floor(path: str, events: str, series: str) -> None:
    """The floor of the store's own design, group commit, in plain Python (no package imported): each event
    tries the lock without waiting; a writer that gets it merges (under the flock: list the hand-over
    directory, read each new hand-over, one read of the file, the counter raised by its event and theirs, one
    writev of a temporary, fsync, rename, the ids applied listed in the file; after the release: fsync of the
    directory, one look for hand-overs that arrived meanwhile and one more merge if so, their files deleted by
    a thread of its own); a writer that finds it busy hands its event over (a file of its own: write, rename,
    fsync, fsync of the directory) and tries the lock once more, merging if it gets it. What a store that
    counts every event durably and exactly once, and never waits for the lock, must at least do."""
    import fcntl
    import queue
    import threading

    key = series.encode() + b" "
    directory = os.path.dirname(path)
    handovers = os.path.join(directory, GROUP_HANDOVERS)
    os.makedirs(handovers, exist_ok=True)
    lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    textfile_directory = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    handover_directory = os.open(handovers, os.O_RDONLY | os.O_DIRECTORY)
    temporary = f"{path}.group.{os.getpid()}.tmp"
    prefix = f"{os.getpid()}-"
    removals: queue.Queue[list[str]] = queue.Queue()
    handed_over = 0

    def remove() -> None:
        while True:
            for name in removals.get():
                try:
                    os.unlink(name, dir_fd=handover_directory)
                except FileNotFoundError:
                    pass
            removals.task_done()

    threading.Thread(target=remove, daemon=True).start()

    def try_lock() -> bool:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def merge(own: int) -> set[str]:
        """Under the lock, taken by the caller: merge ``own`` and the hand-overs waiting; release it; return the
        hand-overs the file now lists."""
        try:
            names = [name for name in os.listdir(handover_directory) if not name.startswith(".")]
            descriptor = os.open(path, os.O_RDONLY)
            try:
                data = os.read(descriptor, os.fstat(descriptor).st_size)
            finally:
                os.close(descriptor)
            cut = data.rfind(b"\n" + GROUP_APPLIED)
            applied = set(data[cut + 1 + len(GROUP_APPLIED):].decode().split()) if cut >= 0 else set()
            body = memoryview(data)[: cut + 1] if cut >= 0 else memoryview(data)
            amount = own
            listed = []
            for name in names:
                if name not in applied:
                    descriptor = os.open(name, os.O_RDONLY, dir_fd=handover_directory)
                    try:
                        amount += int(os.read(descriptor, 64))
                    finally:
                        os.close(descriptor)
                listed.append(name)
            start = data.index(key) + len(key)
            end = data.index(b"\n", start)
            value = float(data[start:end]) + amount
            number = b"%d" % value if value.is_integer() else repr(value).encode()
            parts: list[bytes | memoryview] = [body[:start], number, body[end:],
                                               GROUP_APPLIED + b" " + " ".join(listed).encode() + b"\n"]
            write_durably(temporary, parts)
            os.rename(temporary, path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        os.fsync(textfile_directory)
        removals.put(listed)
        return set(listed)

    def merge_and_look(own: int) -> None:
        listed = merge(own)
        arrived = any(not name.startswith(".") and name not in listed for name in os.listdir(handover_directory))
        if arrived and try_lock():
            merge(0)

    def record() -> bool:
        nonlocal handed_over
        if try_lock():
            merge_and_look(1)
            return False
        handed_over += 1
        name = f"{prefix}{handed_over}"
        descriptor = os.open(f".{name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=handover_directory)
        try:
            os.write(descriptor, b"1")
            os.rename(f".{name}", name, src_dir_fd=handover_directory, dst_dir_fd=handover_directory)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.fsync(handover_directory)
        if try_lock():  # the holder may have looked before this hand-over was there
            merge_and_look(0)
        return True

    report_race(record, int(events), {"handed_over": lambda: handed_over})


def group_floor_counted(path: str) -> int:
    """The events the group-commit floor counted in ``path`` beyond its counter: hand-overs no merge applied."""
    with open(path, "rb") as file:
        data = file.read()
    cut = data.rfind(b"\n" + GROUP_APPLIED)
    applied = set(data[cut + 1 + len(GROUP_APPLIED):].decode().split()) if cut >= 0 else set()
    handovers = os.path.join(os.path.dirname(path), GROUP_HANDOVERS)
    return sum(1 for name in os.listdir(handovers) if not name.startswith(".") and name not in applied)


def run_queue_wait() -> float | None:
    """Seconds this thread has spent runnable but not running, waiting for a CPU (Linux's schedstat; None where
    there is none)."""
    try:
        with open("/proc/thread-self/schedstat") as file:
            return int(file.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def held(directory: str, calls: str) -> None:
    """Record while another process holds the lock: each call's latency and what it raised. Stops after a
    call that waited more than 5 s (without a budget every call waits the whole lock timeout)."""
    from fraisier_textfile import MetricsRecorder

    recorder = MetricsRecorder(directory)
    results = []
    for _ in range(int(calls)):
        started = time.perf_counter()
        raised = None
        try:
            recorder.record_deployment_complete(*EVENT)
        except Exception as error:  # reported: a recorder with the budget raises nothing
            raised = f"{type(error).__name__}: {error}"
        elapsed = time.perf_counter() - started
        results.append({"seconds": elapsed, "raised": raised})
        if elapsed > 5:
            break
    summary = recorder.get_metrics_summary() if hasattr(recorder, "get_metrics_summary") else {}
    # The parent times from this report to the exit: an exit flush may wait for the lock too.
    report({"calls": results, "summary": {key: str(value) for key, value in summary.items()}})


def merge(directory: str) -> None:
    """One merge of nothing: applies whatever was handed over, recounts in-flight deployments."""
    from fraisier_textfile.changes import Changes
    TextfileStore = _store_class()

    TextfileStore(directory).merge(Changes())
    report({"merged": True})


def merge_all(directory: str) -> None:
    """After a race: the hand-overs still waiting (none of the race's merges applied them: its last calls handed
    over, and the merges their processes owed stopped at their bound), then every one of them merged, as
    ``fraisier textfile refresh`` does (a single merge applies at most a few hundred). A revision without
    ``merge_backlog`` makes one merge."""
    from fraisier_textfile.changes import Changes
    TextfileStore = _store_class()

    waiting = handovers_waiting(directory)
    store = TextfileStore(directory)
    backlog = getattr(store, "merge_backlog", None)
    if backlog is not None:
        backlog()
    else:
        store.merge(Changes())
    report({"waiting": waiting})


def handovers_waiting(directory: str) -> int:
    """The recorder's hand-over files in ``directory`` that the textfile does not list as applied."""
    marker = b"# fraisier_textfile applied-handovers:"
    try:
        with open(os.path.join(directory, "fraisier.prom"), "rb") as file:
            applied = {line[len(marker):].decode() for line in file if line.startswith(marker)}
    except OSError:
        applied = set()
    listed = set(" ".join(applied).split())
    try:
        names = os.listdir(os.path.join(directory, ".fraisier-handover"))
    except OSError:
        return 0
    return sum(1 for name in names
               if name.endswith(".json") and not name.startswith(".") and name[:-len(".json")] not in listed)


def hold(lock_path: str) -> None:
    """Hold the textfile's lock until killed."""
    import filelock

    with filelock.FileLock(lock_path):
        print("held", flush=True)
        time.sleep(3600)


if __name__ == "__main__":
    name, *arguments = sys.argv[1:]
    if name == "features":
        report(features())
    else:
        globals()[name](*arguments)
