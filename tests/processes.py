"""Real processes for the tests: the binaries they need, free loopback ports, servers started and stopped."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, NoReturn

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent


def binary(name: str) -> str:
    """The path of a required binary. Missing: a skip on a developer's machine, a failure under CI=true."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed: apt-get install the Debian package (.ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_get(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode("utf-8"))


def wait_until_serving(url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server for {url} exited with {process.returncode}")
        try:
            http_get(url, timeout=2)
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing served {url} within {timeout}s") from None
            time.sleep(0.05)


def stop(process: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def running(command: Sequence[str], ready_url: str, log: Path | None = None, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server (in ``env`` and ``cwd``, this process's by default), wait until ``ready_url`` answers, and stop
    it (SIGTERM, then SIGKILL) afterwards.

    Its output goes to ``log`` (or an anonymous file), never to a pipe: a pipe nobody reads would stall a
    server that logs on every scrape. If it does not come up, the error shows the end of that output."""
    output = open(log, "w+b") if log is not None else tempfile.TemporaryFile()  # noqa: SIM115
    try:
        process = subprocess.Popen(list(command), stdout=output, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        try:
            try:
                wait_until_serving(ready_url, process)
            except AssertionError as error:
                raise AssertionError(f"{error}; its output ends:\n{tail(output)}") from None
            yield process
        finally:
            stop(process)
    finally:
        output.close()


def tail(output: IO[bytes] | Path, lines: int = 30) -> str:
    """The last lines of a server's output (an open file or a log's path)."""
    if isinstance(output, Path):
        try:
            data = output.read_bytes()
        except OSError:
            return "(no log)"
    else:
        output.seek(0)
        data = output.read()
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


@contextmanager
def node_exporter(directory: Path, log: Path | None = None) -> Iterator[str]:
    """The real node_exporter with only its textfile collector, reading ``directory``. Yields its /metrics URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    command = [
        binary("prometheus-node-exporter"),
        "--collector.disable-defaults",
        "--collector.textfile",
        f"--collector.textfile.directory={directory}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with running(command, url, log):
        yield url


@contextmanager
def fraisier_metrics(directory: Path, log: Path | None = None) -> Iterator[str]:
    """``fraisier metrics`` serving ``directory`` on a free loopback port. Yields its /metrics URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    command = [
        sys.executable,
        "-m",
        "fraisier_textfile",
        "--textfile-dir",
        str(directory),
        "metrics",
        "--address",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with running(command, url, log):
        yield url


def fraisier(
    *arguments: str,
    textfile_dir: Path | None = None,
    check: bool = False,
    env: dict[str, str] | None = None,
    **run: object,
) -> subprocess.CompletedProcess[str]:
    """Run the ``fraisier`` CLI as a real subprocess (``python -m fraisier_textfile``)."""
    environment = dict(os.environ if env is None else env)
    if textfile_dir is not None:
        environment["FRAISIER_TEXTFILE_DIR"] = str(textfile_dir)
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "fraisier_textfile", *arguments],
        capture_output=True,
        text=True,
        check=check,
        env=environment,
        **run,
    )


@contextmanager
def lock_held_elsewhere(lock_path: Path) -> Iterator[None]:
    """Another process holds the textfile's lock until the block ends."""
    script = (
        f"import filelock, time\nwith filelock.FileLock({str(lock_path)!r}):\n"
        "    print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.kill()
        holder.wait()


def copied_as_built(path: Path, text: str) -> os.stat_result:
    """``text`` copied over ``path`` by ``cp -p`` from a build that gives every file one mtime (Nix's store,
    SOURCE_DATE_EPOCH): written in place, its inode kept, with the source's mtime. Its status after."""
    built = path.with_name(path.name + ".built")
    built.write_text(text)
    os.utime(built, ns=(1_000_000_000, 1_000_000_000))
    subprocess.run(["cp", "-p", str(built), str(path)], check=True)
    built.unlink()
    return path.stat()


@contextmanager
def small_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` (``64k``, ``16m``) at ``mount_point``: a filesystem that fills up, since a full
    disk cannot be had otherwise. Mounting needs root: elsewhere a skip, and a failure under CI=true."""
    # mode=755: a tmpfs is 1777 by default; a full disk is the point here, not a shared /tmp (store/walk.py).
    with _mounted(["-t", "tmpfs", "-o", f"size={size},mode=755", "tmpfs"], mount_point, "a tmpfs"):
        yield mount_point


@contextmanager
def _mounted(arguments: list[str], mount_point: Path, what: str) -> Iterator[None]:
    """``mount ARGUMENTS MOUNT_POINT`` for the block, unmounted after it. Mounting needs root: elsewhere a skip,
    and a failure under CI=true."""
    mount_point.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", *arguments, str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount {what}: {mounted.stderr!r}")
        pytest.skip(f"cannot mount {what} here (not root)")
    try:
        yield
    finally:
        # Lazily: a store or recorder of the test may still hold a file open there. (A loop device goes with the
        # last use of its mount: mount -o loop sets it to clear itself.)
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


@contextmanager
def small_ext4(mount_point: Path, size: str = "8M") -> Iterator[Path]:
    """A real ext4 of ``size`` at ``mount_point``, on a loop device over an image file beside it: ext4 gives a
    freed inode number to the next new file at once (tmpfs never reuses one), so a file replaced twice may come
    back with its first inode number. Mounting needs root: elsewhere a skip, and a failure under CI=true."""
    image = mount_point.with_name(mount_point.name + ".img")
    with open(image, "wb") as file:
        file.truncate(int(size[:-1]) << {"K": 10, "M": 20}[size[-1]])
    subprocess.run([binary("mkfs.ext4"), "-q", "-F", str(image)], check=True, capture_output=True)
    try:
        with _mounted(["-o", "loop", str(image)], mount_point, "an ext4 image"):
            yield mount_point
    finally:
        image.unlink()


STORE_WORKERS = Path(__file__).with_name("store_workers.py")


def start_together(workers: Sequence[subprocess.Popen[str]]) -> None:
    """Wait until every worker has said ``ready`` (its imports and set-up done), then tell them all ``go``, so
    that they race from the same moment rather than in the order they were started."""
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline() == "ready\n"
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()


def start_store_worker(name: str, *arguments: str) -> subprocess.Popen[str]:
    """A process running ``name`` of tests/store_workers.py, with pipes to talk to it."""
    return subprocess.Popen(
        [sys.executable, str(STORE_WORKERS), name, *arguments],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def exit_with(status: Callable[[], int]) -> NoReturn:
    """In a forked child: end with ``status()`` as its exit status (1 if it raised, its traceback on stderr), without
    the parent's exit hooks or pytest's teardown."""
    code = 1
    try:
        code = status()
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def require(condition: bool, message: str) -> None:
    """Like ``binary()``: a skip on a developer's machine, a failure under CI=true."""
    if not condition:
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def opens_of(path: Path) -> Iterator[Callable[[], int]]:
    """Counts the opens of ``path``'s inode (a FIFO, a device, a file) by anyone, through any link, while the block
    runs: inotify's IN_OPEN, queued by the kernel at each open (O_PATH, which runs no driver, is not one)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    descriptor = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if descriptor < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    in_open = 0x20
    if libc.inotify_add_watch(descriptor, os.fsencode(path), in_open) < 0:
        os.close(descriptor)
        raise OSError(ctypes.get_errno(), "inotify_add_watch", str(path))
    seen = 0

    def count() -> int:
        nonlocal seen
        while True:
            try:
                data = os.read(descriptor, 4096)
            except BlockingIOError:
                return seen
            offset = 0
            while offset < len(data):  # struct inotify_event: wd, mask, cookie, len, then len bytes of name
                mask, length = int.from_bytes(data[offset + 4:offset + 8], sys.byteorder), int.from_bytes(
                    data[offset + 12:offset + 16], sys.byteorder)
                seen += bool(mask & in_open)
                offset += 16 + length

    try:
        yield count
    finally:
        os.close(descriptor)


THREADLESS_USER = 61234
"""A user id no account has: the processes run as it are the test's alone, which a limit on them needs."""


Threadless = tuple[list[str], dict[str, str], Path]
"""A command's start that runs a Python script (``-c``) as :data:`THREADLESS_USER`, its environment, and a
textfile directory of that user's."""


@contextmanager
def threadless_user() -> Iterator[Threadless]:
    """How to run a Python script as a user who may not start one more thread (RLIMIT_NPROC reached, as a
    container's pids.max or systemd's TasksMax do): see :data:`Threadless`. All of it is in a directory another
    user can enter (pytest's tmp_path is under a 0700 one), with copies of the package and prometheus_client:
    that user cannot read root's interpreter, so the script runs in Debian's /usr/bin/python3."""
    import prometheus_client

    if os.geteuid() != 0:
        message = "needs root, to run a process as another user with a limit on its tasks (CI runs as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    setpriv, prlimit = binary("setpriv"), binary("prlimit")
    python = shutil.which("python3", path="/usr/bin")
    if python is None:
        pytest.fail("the test needs Debian's /usr/bin/python3, which another user can run")
    root = Path(tempfile.mkdtemp(prefix="fraisier-threadless-", dir="/tmp"))
    try:
        site = root / "site"
        for package in (REPOSITORY / "fraisier_textfile", Path(prometheus_client.__file__).parent):
            shutil.copytree(package, site / package.name, ignore=shutil.ignore_patterns("__pycache__"))
        textfile_dir = root / "textfile"
        textfile_dir.mkdir()
        for directory, _, files in os.walk(root):
            os.chmod(directory, 0o755)
            for name in files:
                os.chmod(os.path.join(directory, name), 0o644)
        os.chown(textfile_dir, THREADLESS_USER, THREADLESS_USER)  # that user's own directory
        command = [setpriv, f"--reuid={THREADLESS_USER}", f"--regid={THREADLESS_USER}", "--clear-groups",
                   prlimit, "--nproc=1", python, "-c"]
        environment = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "FRAISIER_TEXTFILE_DIR": str(textfile_dir)}
        yield command, environment, textfile_dir
    finally:
        shutil.rmtree(root, ignore_errors=True)


def ctrl_c_once_noted(command: Sequence[str], noted: Path, presses: int) -> tuple[int, str]:
    """Run ``command``; once it wrote the file ``noted`` (it is where the test wants it), a moment later, send it
    ``presses`` SIGINTs, as Ctrl-C does, a moment apart. Its exit status and stderr (it must end within 30 s)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not noted.exists():
            assert process.poll() is None, process.communicate()
            time.sleep(0.01)
        time.sleep(0.3)
        for _ in range(presses):
            process.send_signal(signal.SIGINT)
            time.sleep(0.1)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stderr


WITNESSED_LOCK = """
class WitnessedLock:
    # ``lock`` as its users take it (``with``, acquire, release), which sets the event ``met`` when a caller finds it
    # held by another thread and waits for it (only the main thread's calls, with ``main_only``): a test then knows
    # that the order it needs happened, and never waits for it on a timer.
    def __init__(self, lock, met, main_only=False):
        self.lock, self.met, self.main_only = lock, met, main_only

    def acquire(self, blocking=True, timeout=-1):
        if self.lock.acquire(blocking=False):
            return True
        if not self.main_only or threading.current_thread() is threading.main_thread():
            self.met.set()
        return self.lock.acquire(True, timeout) if blocking else False

    def release(self):
        self.lock.release()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exception):
        self.release()
"""
"""For a script (``threading`` imported): the class ``WitnessedLock``. This module's ``WitnessedLock`` is the same
class, for tests in this process."""
_witnessed: dict[str, Any] = {"threading": threading}
exec(WITNESSED_LOCK, _witnessed)
WitnessedLock: Any = _witnessed["WitnessedLock"]


SLOW_IMPORT_IN_ANOTHER_THREAD = WITNESSED_LOCK + """
importing, fork_met = threading.Event(), threading.Event()

class SlowDisk:
    # The file of the module named ``witness`` read slowly by any thread but the main one (a cold page cache after
    # an upgrade, a virtual environment on a network filesystem): the read lasts until the main thread's fork has
    # met it, the fork waiting for it (the import lock found held) or made (if it does not wait).
    def find_spec(self, name, path, target=None):
        if name != witness or threading.current_thread() is threading.main_thread():
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            imports = sys.modules["fraisier_textfile.imports"]
            # This thread holds it: the main thread's fork (its hook) finds it held.
            imports.lock = WitnessedLock(imports.lock, fork_met, main_only=True)
            importing.set()
            assert fork_met.wait(60), "no fork came"
            load(module)

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, SlowDisk())
os.register_at_fork(after_in_parent=fork_met.set)  # a fork that did not wait: made

def ended_within(pid, seconds):
    # Whether the forked child ``pid`` ended within ``seconds``; killed if not.
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return False
"""
"""For a script (``importlib.util``, ``os``, ``signal``, ``sys``, ``threading``, ``time`` imported, ``witness``
set): the event ``importing`` is set once a thread other than the main one is inside its import of the witness (under
the package's import lock), which lasts until the main thread forks; ``ended_within(pid, seconds)`` says whether a
forked child ended in time."""
