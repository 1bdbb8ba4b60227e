"""This package installed as users install it: a wheel built from this checkout, in a fresh virtual environment.

Everything here depends on the interpreter running the tests only, never on its base interpreter: a venv made
with ``system_site_packages=True`` sees the *base* interpreter's packages (pyenv's, Debian's), not the running
environment's, so a build inside it failed wherever the base had no ``wheel``.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
import venv
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from .processes import REPOSITORY

# What the build reads (the start-up hook's module and .pth, and the build step that ships the .pth, included).
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "build_with_hook.py", "_fraisier_textfile_hook.py",
           "fraisier_textfile_hook.pth")


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without what reaches into another installation: PYTHONPATH points at this
    checkout (a venv's Python would import our package from there instead of from its site-packages)."""
    environment = {
        key: value for key, value in os.environ.items()
        if not key.startswith(("FRAISIER_", "PYTHON", "VIRTUAL_ENV", "PROMETHEUS_"))
    }
    environment.update(extra)
    return environment


def build_wheel(directory: Path, tree: Path = REPOSITORY, index: bool = True) -> Path:
    """A wheel of this checkout, built by the running interpreter from a copy of its sources (a build leaves
    build/ and an egg-info in the tree it builds). ``index=False``: only from what the running environment holds,
    as on a machine without the index."""
    source = directory / "source"
    source.mkdir(parents=True)
    for name in SOURCES:
        if (tree / name).exists():
            shutil.copy(tree / name, source / name)
    for directory_name in ("fraisier_textfile", "contrib"):
        shutil.copytree(tree / directory_name, source / directory_name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = directory / "wheels"
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "-q", "--no-deps",
               "-w", str(wheels), str(source)]
    # Without build isolation first: the test extras put setuptools and wheel here, and it needs no index.
    built = subprocess.run([*command, "--no-build-isolation"], capture_output=True, text=True,
                           env=clean_environment(), timeout=600)
    if built.returncode != 0 and index:
        built = subprocess.run(command, capture_output=True, text=True, env=clean_environment(), timeout=600)
    assert built.returncode == 0, f"building a wheel of {tree} failed:\n{built.stderr[-3000:]}"
    [wheel] = wheels.glob("*.whl")
    return wheel


@dataclass(frozen=True)
class Installation:
    root: Path
    """The virtual environment."""

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def script(self, name: str) -> Path:
        return self.root / "bin" / name

    def run(self, *command: str | Path, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(part) for part in command], capture_output=True, text=True, cwd=cwd,
                              env=clean_environment(**extra), timeout=300)


def install(wheel: Path, root: Path, base: str | None = None, running_packages: bool = True) -> Installation:
    """A new virtual environment at ``root`` holding ``wheel``. Made by ``base`` (default: this interpreter)
    without pip: the running pip installs into it (``pip --python``). With ``running_packages``, the running
    environment's site-packages are on its path, as plain lines of a .pth file, so that the .pth files there
    (an editable install of this package among them) are not run: the dependencies come from there, offline."""
    if base is None:
        venv.EnvBuilder(with_pip=False).create(root)
    else:
        subprocess.run([base, "-m", "venv", "--without-pip", str(root)], check=True, env=clean_environment(),
                       capture_output=True, timeout=300)
    installation = Installation(root)
    purelib = subprocess.run(
        [str(installation.python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True, env=clean_environment(),
    ).stdout.strip()
    if running_packages:
        running = [path for path in [*site.getsitepackages(), sysconfig.get_path("purelib")] if Path(path).is_dir()]
        (Path(purelib) / "_running_environment.pth").write_text("".join(f"{path}\n" for path in dict.fromkeys(running)))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", str(installation.python),
           "install", "-q"]
    # The running site-packages may hold an editable install of the same version: without --ignore-installed,
    # pip would call the wheel "already satisfied" and skip it.
    arguments = ["--no-deps", "--no-index", "--ignore-installed"] if running_packages else []
    installed = subprocess.run([*pip, *arguments, str(wheel)], capture_output=True, text=True,
                               env=clean_environment(), timeout=600)
    assert installed.returncode == 0, f"installing {wheel.name} failed:\n{installed.stderr[-3000:]}"
    return installation


def build_revision(revision: str, directory: Path) -> Path:
    """A wheel of this package as it was at ``revision`` of this repository (a release: 0.2.0 is ``87d4bd1``, whose
    wheel is kept in tests/releases: test_upgrade.py), built as :func:`build_wheel` builds this checkout, in
    ``directory``. Skipped where the revision is not in the clone (a shallow one), failed under CI=true."""
    archive = subprocess.run(["git", "-C", str(REPOSITORY), "archive", "--format=tar", revision],
                             capture_output=True, timeout=300)
    if archive.returncode != 0:
        message = f"git archive {revision} failed (a shallow clone?): {archive.stderr.decode(errors='replace')}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    tree = directory / "tree"
    tree.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True, timeout=300)
    return build_wheel(directory / "build", tree)


def reinstall(wheel: Path, installation: Installation) -> None:
    """Replace the package in ``installation`` by ``wheel``'s, in place, as ``pip install -U`` (or a downgrade)
    does under the processes still running from it."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", str(installation.python),
           "install", "-q", "--no-deps", "--no-index", "--force-reinstall", str(wheel)]
    replaced = subprocess.run(pip, capture_output=True, text=True, env=clean_environment(), timeout=600)
    assert replaced.returncode == 0, f"installing {wheel.name} failed:\n{replaced.stderr[-3000:]}"


@contextmanager
def directory_the_units_can_see() -> Iterator[Path]:
    """A temporary directory that the systemd units' hardening does not hide (pytest's tmp_path is under /tmp,
    which PrivateTmp hides): under /opt or /srv, where an operator installs. Readable by every user, as a venv
    under /opt is, so that a service's user can run what is installed there."""
    for parent in ("/opt", "/srv"):
        if os.access(parent, os.W_OK):
            directory = Path(tempfile.mkdtemp(prefix="fraisier-textfile-test-", dir=parent))
            directory.chmod(0o755)
            try:
                yield directory
            finally:
                shutil.rmtree(directory, ignore_errors=True)
            return
    message = "no writable /opt or /srv for an installation the units can see: run the tests as root (CI does)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
