"""Packaging: the version is in one place, and an installed copy reports it the same way everywhere."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import venv
from pathlib import Path

import fraisier_textfile

from .processes import REPOSITORY


def test_the_license_file_matches_the_projects_license() -> None:
    text = (REPOSITORY / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    pyproject = (REPOSITORY / "pyproject.toml").read_text()
    assert 'license = { text = "MIT" }' in pyproject
    assert '"License :: OSI Approved :: MIT License"' in pyproject


def test_the_version_is_written_once() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", fraisier_textfile.__version__)
    pyproject = (REPOSITORY / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and not re.search(r'^version\s*=\s*"', pyproject, re.MULTILINE)
    assert 'version = { attr = "fraisier_textfile.__version__" }' in pyproject


def test_pip_install_then_both_entry_points_report_the_same_version(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "build_with_hook.py",
                 "_fraisier_textfile_hook.py", "fraisier_textfile_hook.pth"):  # what the build reads
        shutil.copy(REPOSITORY / name, source / name)
    shutil.copytree(REPOSITORY / "fraisier_textfile", source / "fraisier_textfile",
                    ignore=shutil.ignore_patterns("__pycache__"))
    environment = tmp_path / "venv"
    # The dependencies come from this interpreter's site-packages: the test needs no network.
    venv.create(environment, system_site_packages=True, with_pip=True)
    python = environment / "bin" / "python"
    clean = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", str(source)],
        capture_output=True, text=True, env=clean, cwd=tmp_path,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    expected = f"fraisier, version {fraisier_textfile.__version__}\n"

    def version(*command: str) -> tuple[int, str]:
        done = subprocess.run([*command, "--version"], capture_output=True, text=True, env=clean, cwd=tmp_path)
        return done.returncode, done.stdout

    assert version(str(environment / "bin" / "fraisier-textfile")) == (0, expected)
    assert version(str(python), "-m", "fraisier_textfile") == (0, expected)
    # `fraisier` is ours too, unless Fraisier is installed beside it (CI installs it, and this venv sees the
    # system's packages): then `fraisier --version` is Fraisier's own answer, unchanged (tests/test_coexist.py).
    probe = "import importlib.util as u; print(bool(u.find_spec('fraisier')))"
    fraisier_there = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, env=clean,
                                    cwd=tmp_path, check=True).stdout.strip()
    if fraisier_there == "False":
        assert version(str(environment / "bin" / "fraisier")) == (0, expected)
    else:
        assert version(str(environment / "bin" / "fraisier"))[1].startswith("fraisier, version ")
    where = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m, fraisier_textfile as f; "
         "print(m.version('fraisier-textfile')); print(f.__file__)"],
        capture_output=True, text=True, env=clean, cwd=tmp_path, check=True,
    ).stdout.splitlines()
    assert where[0] == fraisier_textfile.__version__
    assert where[1].startswith(str(environment))  # the installed copy answered, not this checkout
