"""Packaging: the version is in one place, and an installed copy reports it the same way everywhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import fraisier_textfile

from .installs import build_wheel, install
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


def released_versions() -> list[str]:
    """The changelog's version headings, newest first (``## 0.2.0 - 2026-12-06``)."""
    text = (REPOSITORY / "CHANGELOG.md").read_text()
    return re.findall(r"^## (\d+\.\d+\.\d+)(?: - \d{4}-\d{2}-\d{2})?$", text, re.MULTILINE)


def test_the_version_is_the_changelogs_latest_release() -> None:
    text = (REPOSITORY / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## .*$", text, re.MULTILINE)
    assert headings[0] == "## Unreleased", "the changelog starts with an Unreleased section for what comes next"
    assert released_versions()[0] == fraisier_textfile.__version__
    assert headings[1].startswith(f"## {fraisier_textfile.__version__} - ")
    assert released_versions() == sorted(released_versions(), key=lambda v: tuple(map(int, v.split("."))),
                                         reverse=True)


IDENTITY = f"fraisier-textfile, version {fraisier_textfile.__version__}\n"


def test_the_version_option_names_this_package() -> None:
    from click.testing import CliRunner

    from fraisier_textfile.cli.group import main

    # Whatever name it was started under: `fraisier, version 0.1.0` read as an old Fraisier.
    for program in ("fraisier", "fraisier-textfile"):
        result = CliRunner().invoke(main, ["--version"], prog_name=program)
        assert (result.exit_code, result.output) == (0, IDENTITY)


def test_the_test_extras_build_a_wheel_without_the_index(tmp_path: Path) -> None:
    """The README's test venv builds this package without the index (the installs that test_packaging, test_docs,
    test_systemd and test_upgrade make): the build requirements come from the test extras. Bug: on Python 3.12 and
    later a venv holds pip alone, no setuptools, so every build there went to the index for it."""
    wheel = build_wheel(tmp_path / "build", index=False)
    assert wheel.name == f"fraisier_textfile-{fraisier_textfile.__version__}-py3-none-any.whl"


@pytest.mark.slow
def test_pip_install_then_every_entry_point_names_this_package_and_its_version(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "build")
    # Made from this interpreter, its dependencies from this environment: nothing of the base interpreter
    # (pyenv's or Debian's, with or without `wheel`) takes part.
    installation = install(wheel, tmp_path / "venv")

    def version(*command: str | Path) -> tuple[int, str]:
        done = installation.run(*command, "--version", cwd=tmp_path)
        return done.returncode, done.stdout

    assert version(installation.script("fraisier-textfile")) == (0, IDENTITY)
    assert version(installation.python, "-m", "fraisier_textfile") == (0, IDENTITY)
    # `fraisier` is ours too, unless Fraisier is installed beside it (CI installs it in this environment, which
    # the venv sees): then `fraisier --version` is Fraisier's own answer, unchanged (tests/test_coexist.py).
    probe = "import importlib.util as u; print(bool(u.find_spec('fraisier')))"
    fraisier_there = installation.run(installation.python, "-c", probe, cwd=tmp_path).stdout.strip()
    if fraisier_there == "False":
        assert version(installation.script("fraisier")) == (0, IDENTITY)
    else:
        assert version(installation.script("fraisier"))[1].startswith("fraisier, version ")
    where = installation.run(
        installation.python, "-c", "import importlib.metadata as m, fraisier_textfile as f; "
        "print(m.version('fraisier-textfile')); print(f.__file__)", cwd=tmp_path,
    ).stdout.splitlines()
    assert where[0] == fraisier_textfile.__version__
    assert where[1].startswith(str(installation.root))  # the installed copy answered, not this checkout


@pytest.mark.slow
def test_without_fraisier_fraisier_version_names_this_package(tmp_path: Path) -> None:
    """A venv of its own, its dependencies from the index (pip's cache): no Fraisier in sight."""
    wheel = build_wheel(tmp_path / "build")
    installation = install(wheel, tmp_path / "venv", running_packages=False)
    probe = installation.run(installation.python, "-c", "import fraisier", cwd=tmp_path)
    assert probe.returncode != 0
    done = installation.run(installation.script("fraisier"), "--version", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, IDENTITY)

