"""The docs are tests: every shell command of README.md, docs/monitoring.md and monitoring/README.md runs as
written, in a fresh copy of this repository (what a user who cloned it has) with a fresh home directory.

A shell block is a fenced block marked ``sh``, ``bash`` or ``shell``, or an indented block (four spaces after a
blank line, outside any fence). ``cron`` blocks are checked too (their command part). A block is run with
``bash`` (``set -e -o pipefail``) in a virtual environment where this package is installed from a wheel of this
checkout; an HTML comment just before a block says what else it needs:

- ``<!-- docs-test: syntax-only: REASON -->``: it needs root, systemd as PID 1, a network or a host's service
  (REASON says which); it is checked with ``bash -n``, and every file of this repository it names must exist.
- ``<!-- docs-test: venv: fresh -->``: it installs this package itself (a venv with pip and nothing else);
  ``venv: fraisier``: a venv with pip, Fraisier 0.84.2 and this package (in that order).
- ``<!-- docs-test: given: ./deploy.sh -->``: files the reader is assumed to have (made executable, exit 0).
- ``<!-- docs-test: serves: URL -->``: it starts a server; passed once URL answers, then stopped.
- ``<!-- docs-test: after: COMMAND -->``: what the reader has done before (a file to forget series from), run first.

A new block is picked up without any change here. Several directives: one comment, separated by ``;``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .installs import build_wheel, clean_environment, install
from .processes import REPOSITORY

DOCUMENTS = [REPOSITORY / "README.md", REPOSITORY / "docs" / "monitoring.md", REPOSITORY / "monitoring" / "README.md"]
SHELLS = {"sh", "bash", "shell"}
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)\s*$")
DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FRAISIER = "fraisier==0.84.2"
# Top-level entries of this repository: a path in a command that starts with one names a file of ours.
REPOSITORY_ENTRIES = ("contrib/", "monitoring/", "docs/", "tests/", "bench/", "fraisier_textfile/", ".ci/")


@dataclass
class Block:
    document: Path
    line: int
    """Of the opening fence, or of an indented block's first line."""
    language: str
    text: str
    directives: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.document.relative_to(REPOSITORY)}:{self.line}"


def parse_directives(comment: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for part in comment.split(";"):
        key, _, value = part.strip().partition(":")
        if key.strip():
            found[key.strip()] = value.strip()
    return found


def shell_blocks(document: Path) -> list[Block]:
    """The shell and cron blocks of a Markdown document, each with the directives of the comment before it."""
    lines = document.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    pending: dict[str, str] = {}
    position = 0
    while position < len(lines):
        line = lines[position]
        directive = DIRECTIVE.search(line)
        fence = FENCE.match(line)
        if directive:
            pending = parse_directives(directive.group(1))
        elif fence:
            indent, marker, language = fence.groups()
            body: list[str] = []
            position += 1
            while position < len(lines) and not lines[position].strip().startswith(marker[:3]):
                body.append(lines[position][len(indent):] if lines[position].startswith(indent) else lines[position])
                position += 1
            if language in SHELLS or language == "cron":
                blocks.append(Block(document, position - len(body), language, "\n".join(body) + "\n", pending))
            pending = {}
        elif line.startswith("    ") and position > 0 and (not lines[position - 1].strip()
                                                             or DIRECTIVE.search(lines[position - 1])):
            start = position
            body = []
            while position < len(lines) and (lines[position].startswith("    ") or not lines[position].strip()):
                body.append(lines[position][4:])
                position += 1
            blocks.append(Block(document, start + 1, "sh", "\n".join(body).rstrip() + "\n", pending))
            pending = {}
            continue
        elif line.strip() and not directive:
            pending = {} if not line.lstrip().startswith("<!--") else pending
        position += 1
    return blocks


def all_blocks() -> list[Block]:
    return [block for document in DOCUMENTS if document.exists() for block in shell_blocks(document)]


BLOCKS = all_blocks()


def cron_commands(block: Block) -> str:
    """The command part of each cron line (after the five time fields and any VAR=value)."""
    commands = []
    for line in block.text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            commands.append(line.split(None, 5)[5])
    return "\n".join(commands) + "\n"


def script(block: Block) -> str:
    return cron_commands(block) if block.language == "cron" else block.text


def named_repository_files(text: str) -> list[str]:
    names = []
    for line in text.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            words = line.split()
        names += [word for word in words if word.startswith(REPOSITORY_ENTRIES)]
    return names


def test_the_documents_have_shell_blocks_and_every_directive_is_known() -> None:
    names = {block.document.name for block in BLOCKS}
    assert {"README.md", "monitoring.md"} <= names
    known = {"syntax-only", "venv", "given", "serves", "after"}
    for block in BLOCKS:
        assert set(block.directives) <= known, (block.name, block.directives)
        if "syntax-only" in block.directives:
            assert block.directives["syntax-only"], f"{block.name}: say why it cannot run (root, systemd, ...)"
        assert block.directives.get("venv", "fresh") in ("fresh", "fraisier"), block.name


def test_the_extractor_finds_fenced_indented_and_marked_blocks(tmp_path: Path) -> None:
    document = tmp_path / "doc.md"
    document.write_text(
        "Text.\n\n    fraisier textfile path\n\nMore.\n\n<!-- docs-test: syntax-only: root -->\n```sh\n"
        "sudo true\n```\n\n```python\nprint()\n```\n\n1. A list:\n\n   ```bash\n   echo one\n   ```\n\n"
        "```cron\n* * * * *  X=1 fraisier textfile refresh\n```\n"
    )
    blocks = shell_blocks(document)
    assert [(block.line, block.language, block.text, block.directives) for block in blocks] == [
        (3, "sh", "fraisier textfile path\n", {}),
        (8, "sh", "sudo true\n", {"syntax-only": "root"}),
        (18, "bash", "echo one\n", {}),
        (22, "cron", "* * * * *  X=1 fraisier textfile refresh\n", {}),
    ]
    assert cron_commands(blocks[3]) == "X=1 fraisier textfile refresh\n"


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.name)
def test_every_shell_block_is_valid_shell_and_names_only_files_that_exist(block: Block) -> None:
    checked = subprocess.run(["bash", "-n"], input=script(block), capture_output=True, text=True)
    assert checked.returncode == 0, f"{block.name}: {checked.stderr}"
    missing = [name for name in named_repository_files(script(block)) if not list(REPOSITORY.glob(name))]
    assert missing == [], f"{block.name} names files this repository does not have"
    if re.search(r"\bpip\b", script(block)) and "syntax-only" not in block.directives:
        # Run in the default venv (no pip of its own), `pip` would be another installation's.
        assert installs(block), f"{block.name} runs pip: mark it <!-- docs-test: venv: fresh --> or make a venv"


# Running them


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a user who cloned the repository has (not the caches and build leftovers of this one)."""
    copy = tmp_path_factory.mktemp("checkout") / "fraisier_textfile"
    shutil.copytree(REPOSITORY, copy, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.egg-info", "build", "dist", ".venv", ".*_cache", ".hypothesis"))
    return copy


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default environment: this package from its wheel, its dependencies from the running environment."""
    return install(wheel, tmp_path_factory.mktemp("installed") / "venv").root


def fresh_venv(root: Path, *requirements: str) -> Path:
    """A venv with its own pip (a block that runs pip installs there, never into another installation)."""
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, env=clean_environment(), timeout=300)
    if requirements:
        done = subprocess.run([str(root / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "install",
                               "-q", *requirements], capture_output=True, text=True, env=clean_environment(),
                              timeout=600)
        if done.returncode != 0:
            message = f"pip install {' '.join(requirements)} failed: {done.stderr[-2000:]}"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
    return root


def run_block(block: Block, environment_root: Path | None, checkout: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    shutil.copytree(checkout, workdir)
    home = tmp_path / "home"
    home.mkdir()
    for name in block.directives.get("given", "").split():
        given = workdir / name
        given.parent.mkdir(parents=True, exist_ok=True)
        given.write_text("#!/bin/sh\necho deployed \"$@\"\n")
        given.chmod(0o755)
    environment = clean_environment(HOME=str(home), PATH=SYSTEM_PATH, LANG="C.UTF-8")
    if environment_root is not None:
        environment.update(PATH=f"{environment_root / 'bin'}:{SYSTEM_PATH}", VIRTUAL_ENV=str(environment_root))
    environment.pop("XDG_STATE_HOME", None)
    # What the reader has already done: a precondition in the directive's own words, run first.
    text = "set -e -o pipefail\n" + block.directives.get("after", "") + "\n" + script(block)
    log = tmp_path / "output.log"
    with open(log, "w+b") as output:
        process = subprocess.Popen(["bash", "-c", text], cwd=workdir, env=environment, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            if "serves" in block.directives:
                wait_until_answers(block.directives["serves"], process, log, block)
            else:
                returncode = process.wait(timeout=600)
                assert returncode == 0, f"{block.name} exited {returncode}:\n{log.read_text()[-3000:]}"
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def wait_until_answers(url: str, process: subprocess.Popen[bytes], log: Path, block: Block) -> None:
    deadline = time.monotonic() + 300
    while True:
        assert process.poll() is None, f"{block.name} exited {process.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                assert response.status == 200
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            assert time.monotonic() < deadline, f"{block.name}: nothing answered {url}:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)


def installs(block: Block) -> bool:
    """It needs an environment of its own: marked so, or it makes and activates a venv itself."""
    return "venv" in block.directives or bool(re.search(r"-m venv .*&& \. \S+/bin/activate", block.text))


RUNNABLE = [block for block in BLOCKS if "syntax-only" not in block.directives and block.language != "cron"]


@pytest.mark.parametrize("block", [block for block in RUNNABLE if not installs(block)],
                         ids=lambda block: block.name)
def test_every_shell_block_runs_as_written(block: Block, installed: Path, checkout: Path, tmp_path: Path) -> None:
    run_block(block, installed, checkout, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("block", [block for block in RUNNABLE if installs(block)],
                         ids=lambda block: block.name)
def test_every_block_that_installs_runs_as_written_in_a_fresh_venv(block: Block, wheel: Path, checkout: Path,
                                                                   tmp_path: Path) -> None:
    if "venv" not in block.directives:  # it makes its own venv, with the system's python3, as on Debian
        run_block(block, None, checkout, tmp_path)
        return
    root = fresh_venv(tmp_path / "venv", *([FRAISIER] if block.directives["venv"] == "fraisier" else []))
    if block.directives["venv"] == "fraisier":  # ours after Fraisier, as the docs say: our `fraisier` wins
        fresh_venv_install(root, str(wheel))
    run_block(block, root, checkout, tmp_path)


def fresh_venv_install(root: Path, requirement: str) -> None:
    done = subprocess.run([str(root / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "install",
                           "-q", requirement], capture_output=True, text=True, env=clean_environment(), timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_repository_files_a_command_names_are_found_and_checked() -> None:
    names = named_repository_files("install -m 0644 contrib/systemd/fraisier-* /etc/systemd/system/  # contrib/x\n"
                                   "promtool check rules 'monitoring/alert-rules.yml' /tmp/monitoring/x\n")
    assert names == ["contrib/systemd/fraisier-*", "monitoring/alert-rules.yml"]
    assert all(list(REPOSITORY.glob(name)) for name in names)
    assert not list(REPOSITORY.glob("contrib/systemd/no-such-unit.service"))


def layout_sections() -> dict[str, str]:
    """The README's Layout block, by its folder: ``""`` for the package's top level, ``format``, ``store``..."""
    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Layout\n", 1)[1].split("```\n", 2)[1]
    sections: dict[str, str] = {}
    folder = None
    for line in block.splitlines():
        head = re.match(r"(fraisier_textfile/|  ([a-z_]+)/)\s", line)
        if head:
            folder = head.group(2) or ""
        elif not line.startswith(" "):
            folder = None  # the repository's other entries
        if folder is not None:
            sections[folder] = sections.get(folder, "") + line + "\n"
    return sections


def test_the_layout_names_every_module_once_under_its_folder_and_nothing_else() -> None:
    """The README's Layout is how a newcomer finds a module: one that is missing, listed twice, listed under
    another folder, or gone, sends them looking in the wrong place."""
    package = REPOSITORY / "fraisier_textfile"
    sections = layout_sections()
    wanted: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        relative = path.relative_to(package).parts
        if path.name == "__init__.py" and len(relative) > 1:
            continue  # a folder's own face, named by the folder
        wanted.setdefault(relative[0] if len(relative) > 1 else "", set()).add(path.name)
    assert set(sections) == set(wanted)
    for folder, text in sections.items():
        listed = re.findall(r"(?<![\w/.])([a-z_]+\.py)\b", text)
        if folder:  # a folder's __init__.py may be named too, when it holds more than the folder's docstring
            listed = [name for name in listed if name != "__init__.py"]
        assert sorted(listed) == sorted(wanted[folder]), folder or "fraisier_textfile/"


def test_how_one_event_travels_names_every_module_the_recorders_event_crosses() -> None:
    """The README's trace is for the next maintainer to follow: a module the event crosses that it does not name
    is a step they cannot find. The modules are those bench/trace_event.py records in a real run."""
    result = subprocess.run([sys.executable, str(REPOSITORY / "bench" / "trace_event.py"), "--json"],
                            capture_output=True, text=True, timeout=120, check=True)
    crossed = json.loads(result.stdout)["api"]["order"]
    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    section = readme.split("## How one event travels\n", 1)[1].split("\n## ", 1)[0]
    first_path = section.split("```", 2)[1]
    named = set(re.findall(r"(?<![\w.])([a-z_]+\.py)\b", first_path))
    missing = [module for module in crossed if module.rsplit(".", 1)[1] + ".py" not in named]
    assert not missing, f"the README's trace of record_deployment_complete does not name {missing}"
