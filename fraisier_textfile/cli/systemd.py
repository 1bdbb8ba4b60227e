"""``fraisier-textfile systemd``: the units of contrib/systemd, written for this host's installation.

contrib/systemd holds the units for the recommended layout (a venv at /opt/fraisier-textfile, the textfile
directory /var/lib/fraisier/textfile, user ``deploy``, 127.0.0.1:8001); they are installed with the package
(``fraisier_textfile.units``). Here each reference value is replaced by this host's: the ``fraisier-textfile``
script beside the running interpreter, the deploying user, the directory, the address.

The units are hardened (ProtectHome, PrivateTmp, a /var/lib that shows only the textfile directory, ...): a
service whose interpreter, script or packages live where that hides them does not start, with an error in the
journal only. So such an installation is refused here, before anything is written, naming the path and the fix.
"""

from __future__ import annotations

import grp
import importlib.util
import ipaddress
import os
import pwd
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fraisier_textfile.cli.scripts import write_atomically
from fraisier_textfile.errors import InvalidValueError

# The values contrib/systemd's units are written for; tests/test_systemd.py checks that each unit holds them.
REFERENCE_EXECUTABLE = "/opt/fraisier-textfile/bin/fraisier-textfile"
REFERENCE_USER = "deploy"
REFERENCE_TEXTFILE_DIRECTORY = "/var/lib/fraisier/textfile"
REFERENCE_ADDRESS = "127.0.0.1"
REFERENCE_PORT = 8001
UNIT_NAMES = ("fraisier-metrics.service", "fraisier-metrics.socket", "fraisier-textfile-refresh.service",
              "fraisier-textfile-refresh.timer")
SCRIPT = "fraisier-textfile"
RECOMMENDED_VENV = "/opt/fraisier-textfile"
NOBODY_UID = 65534
# What the units' hardening hides from the services, and which directive hides it. /var/lib is the server's
# TemporaryFileSystem=/var/lib:ro (only the textfile directory is bound back in): fine for the textfile
# directory, fatal for an installation.
HIDDEN_FROM_THE_SERVICES = {
    "/home": "ProtectHome=yes",
    "/root": "ProtectHome=yes",
    "/run/user": "ProtectHome=yes",
    "/tmp": "PrivateTmp=yes",
    "/var/tmp": "PrivateTmp=yes",
    "/dev/shm": "PrivateDevices=yes",
    "/var/lib": "TemporaryFileSystem=/var/lib:ro",
}
# The modules the services import, from this package's and its dependencies' distributions.
MODULES = ("fraisier_textfile", "click", "prometheus_client", "yaml", "bcrypt")
# A path systemd reads as written: no blanks (ExecStart= and BindReadOnlyPaths= split on them), no quotes or
# backslashes (unquoting), no % (specifiers).
PLAIN_PATH = re.compile(r"/[A-Za-z0-9._+,:@/-]*")
USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?")


@dataclass(frozen=True)
class Installation:
    """Where this package runs from: what the units' ExecStart= starts and everything it needs to read."""

    script: Path
    needed: tuple[Path, ...]
    """The script, the interpreter (as the script names it, and its real file), the environment's prefixes and
    the directories of the modules the services import."""


def this_installation() -> Installation:
    """The ``fraisier-textfile`` script installed with the running interpreter (a venv's bin directory), and
    what running it reads."""
    script = Path(sysconfig.get_path("scripts")) / SCRIPT
    if not os.access(script, os.X_OK):
        raise InvalidValueError(
            f"{script} does not exist: this interpreter ({sys.executable}) has no {SCRIPT} script beside it; run "
            f"the {SCRIPT} of the installation the units should start (pip install this package into a venv "
            f"under {RECOMMENDED_VENV} and run {RECOMMENDED_VENV}/bin/{SCRIPT} systemd ...)"
        )
    needed: list[Path] = [script]
    interpreter = shebang_interpreter(script)
    if interpreter is not None:
        needed += [interpreter, interpreter.resolve()]
    needed += [Path(sys.executable), Path(sys.executable).resolve(), Path(sys.prefix), Path(sys.base_prefix)]
    for name in MODULES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None:
            needed.append(Path(spec.origin).parent)
    return Installation(script, tuple(dict.fromkeys(needed)))


def shebang_interpreter(script: Path) -> Path | None:
    """The interpreter of a script pip installed (``#!/opt/venv/bin/python``), if it names one."""
    try:
        with open(script, "rb") as opened:
            first = opened.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!/"):
        return None
    return Path(first[2:].decode(errors="replace").split()[0])


def hidden_by(path: Path, include_var_lib: bool = True) -> tuple[str, str] | None:
    """The hidden directory that holds ``path`` and the directive that hides it, or None."""
    for directory, directive in HIDDEN_FROM_THE_SERVICES.items():
        if directory == "/var/lib" and not include_var_lib:
            continue
        if path == Path(directory) or Path(directory) in path.parents:
            return directory, directive
    return None


def check_installation(installation: Installation) -> None:
    for path in installation.needed:
        hidden = hidden_by(Path(os.path.abspath(path)))
        if hidden is not None:
            directory, directive = hidden
            raise InvalidValueError(
                f"{path} is under {directory}, which the units' {directive} hides from the services: they would "
                f"not start. Install into a venv under {RECOMMENDED_VENV} made by the system's python3 (apt "
                f"install python3-venv; python3 -m venv {RECOMMENDED_VENV}; {RECOMMENDED_VENV}/bin/pip install "
                f"SOURCE) and run {RECOMMENDED_VENV}/bin/{SCRIPT} systemd ..."
            )
    if not PLAIN_PATH.fullmatch(str(installation.script)):
        raise InvalidValueError(
            f"{installation.script}: a path with blanks, quotes, backslashes or % cannot be written into a unit "
            f"as is: install into a venv under {RECOMMENDED_VENV}"
        )


def check_textfile_directory(directory: Path, user: str) -> Path:
    directory = Path(os.path.abspath(directory))
    if not PLAIN_PATH.fullmatch(str(directory)):
        raise InvalidValueError(
            f"--textfile-dir {directory}: a path with blanks, quotes, backslashes or % cannot be written into a "
            f"unit as is: use {REFERENCE_TEXTFILE_DIRECTORY}"
        )
    hidden = hidden_by(directory, include_var_lib=False)
    if hidden is not None:
        hidden_directory, directive = hidden
        raise InvalidValueError(
            f"--textfile-dir {directory} is under {hidden_directory}, which the units' {directive} hides from "
            f"the services (and node_exporter's user may not read it): use {REFERENCE_TEXTFILE_DIRECTORY} "
            f"(install -d -o {user} -g {user} -m 0755 {REFERENCE_TEXTFILE_DIRECTORY})"
        )
    if not directory.is_dir():
        raise InvalidValueError(
            f"--textfile-dir {directory} does not exist (the server binds it read-only: it must exist before it "
            f"starts): create it for the deploying user: install -d -o {user} -g {user} -m 0755 {directory}"
        )
    if not writable_by(directory, user):
        owner = directory.stat().st_uid
        try:
            owner_name = pwd.getpwuid(owner).pw_name
        except KeyError:
            owner_name = str(owner)
        raise InvalidValueError(
            f"--textfile-dir {directory} belongs to {owner_name} and {user} cannot write it (the refresh service "
            f"runs as {user}): chown {user} {directory}, or give the user that owns it"
        )
    return directory


def writable_by(directory: Path, user: str) -> bool:
    """Whether ``user`` may create files in ``directory``, by its owner, group and mode (root may)."""
    entry = pwd.getpwnam(user)
    if entry.pw_uid == 0:
        return True
    status = directory.stat()
    if status.st_uid == entry.pw_uid:
        return bool(status.st_mode & 0o300 == 0o300)
    groups = {entry.pw_gid, *(group.gr_gid for group in grp.getgrall() if user in group.gr_mem)}
    if status.st_gid in groups:
        return bool(status.st_mode & 0o030 == 0o030)
    return bool(status.st_mode & 0o003 == 0o003)


def check_address(address: str) -> None:
    try:
        # ListenStream= takes an address, not a host name ("Failed to parse address value": the socket is refused).
        ipaddress.ip_address(address)
    except ValueError:
        raise InvalidValueError(
            f"--address {address!r} is not an IP address (a .socket unit listens on one): give 127.0.0.1, "
            f"0.0.0.0 for every IPv4 address, or :: for every address"
        ) from None


def check_user(user: str) -> None:
    if not USER_NAME.fullmatch(user):
        raise InvalidValueError(f"--user {user!r} is not a user name: give the deploying user, e.g. --user deploy")
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise InvalidValueError(
            f"--user {user}: no such user on this host: create it (useradd --system --create-home {user}) or give "
            f"the user that deploys"
        ) from None
    if entry.pw_uid == NOBODY_UID:
        # systemd-analyze verify: "Special user nobody configured, this is not safe!" (it owns NFS's unmapped files).
        raise InvalidValueError(
            f"--user {user}: systemd refuses to call a service of user nobody safe: give the user that deploys "
            f"(useradd --system --create-home deploy)"
        )


def reference_units() -> dict[str, str]:
    """The units of contrib/systemd: installed as ``fraisier_textfile.units``; read from the checkout when this
    package runs from its source tree (PYTHONPATH, an editable install), which has no such package."""
    found: dict[str, str] = {}
    try:
        units = resources.files("fraisier_textfile.units")
        for name in UNIT_NAMES:
            found[name] = units.joinpath(name).read_text(encoding="utf-8")
        return found
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        checkout = Path(__file__).resolve().parent.parent.parent / "contrib" / "systemd"
        return {name: (checkout / name).read_text(encoding="utf-8") for name in UNIT_NAMES}


def render_units(executable: str, user: str, textfile_directory: str, address: str = REFERENCE_ADDRESS,
                 port: int = REFERENCE_PORT, units: dict[str, str] | None = None) -> dict[str, str]:
    """The reference units with this host's values in place of the reference ones (comments included, so
    that they name what is really there)."""
    listen = f"{address}:{port}" if ":" not in address else f"[{address}]:{port}"
    rendered: dict[str, str] = {}
    for name, text in (reference_units() if units is None else units).items():
        lines = []
        for line in text.splitlines(keepends=True):
            if line.startswith("User="):
                line = f"User={user}\n"
            elif line.startswith("ListenStream="):
                line = f"ListenStream={listen}\n"
            elif line.startswith("ExecStart=") and "--port" in line:
                line = line.replace(f"--address {REFERENCE_ADDRESS} --port {REFERENCE_PORT}",
                                    f"--address {address} --port {port}")
            lines.append(line)
        text = "".join(lines)
        text = text.replace(REFERENCE_EXECUTABLE, executable).replace(REFERENCE_TEXTFILE_DIRECTORY, textfile_directory)
        rendered[name] = text
    return rendered


def write_units(output: Path, units: dict[str, str], force: bool) -> list[Path]:
    """Every unit, each replaced atomically. A unit already there with other content, or not a regular file,
    is refused (unless ``force``) before any is written."""
    output = Path(os.path.abspath(output))
    if not output.is_dir():
        raise InvalidValueError(f"--output {output} is not a directory: create it, or give another")
    for name, text in units.items():
        existing = output / name
        if existing.is_symlink() or (existing.exists() and not existing.is_file()):
            raise InvalidValueError(f"{existing} exists and is not a regular file: remove it, or give another --output")
        if not force and existing.exists() and existing.read_text(encoding="utf-8", errors="replace") != text:
            raise InvalidValueError(
                f"{existing} exists with other content (edited for this host?): keep your changes in a drop-in "
                f"(systemctl edit {name}) and give --force to replace it, or give another --output"
            )
    written = []
    for name, text in units.items():
        target = output / name
        try:
            write_atomically(target, text, 0o644)
        except OSError as error:
            raise InvalidValueError(
                f"cannot write {target}: {error.strerror} (run as root for /etc/systemd/system, or give --output DIR)"
            ) from None
        written.append(target)
    return written


def verify_units(units: dict[str, str]) -> bool:
    """``systemd-analyze verify`` on the units, in a directory of their own, before any is installed: this
    host's systemd parses them (a key it does not know, a path it cannot use). False if it has none to ask."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return False
    with tempfile.TemporaryDirectory(prefix="fraisier-units-") as directory:
        for name, text in units.items():
            (Path(directory) / name).write_text(text, encoding="utf-8")
        done = subprocess.run([analyze, "verify", *sorted(units)], cwd=directory, capture_output=True, text=True,
                              timeout=120)
    problems = [line.replace(f"{directory}/", "") for line in done.stderr.splitlines() if line.strip()]
    if done.returncode != 0 or problems:
        raise InvalidValueError(
            f"systemd-analyze verify finds a problem in the units for this host: {'; '.join(problems[:3])}"
        )
    return True


def generate(user: str, textfile_directory: Path, output: Path, address: str, port: int,
             force: bool) -> list[Path]:
    """Check the host, then write the four units; returns their paths."""
    check_user(user)
    installation = this_installation()
    check_installation(installation)
    directory = check_textfile_directory(textfile_directory, user)
    check_address(address)
    units = render_units(str(installation.script), user, str(directory), address, port)
    verify_units(units)
    return write_units(output, units, force)
