"""``fraisier-textfile install-dispatcher``: the ``fraisier`` script put back after a Fraisier upgrade.

Fraisier and this package both declare a ``fraisier`` console script; pip writes the one of the distribution
installed last. Every upgrade (or reinstall) of Fraisier therefore replaces our dispatcher with Fraisier's own
script, and this package is on no index, so ``pip install --force-reinstall fraisier-textfile`` cannot get it
back. This writes the script pip would write for us, beside ``fraisier-textfile``, for the same interpreter.
"""

from __future__ import annotations

import os
import stat
import sys
import sysconfig
import tempfile
from pathlib import Path

from fraisier_textfile.errors import InvalidValueError

SCRIPT = "fraisier"
OUR_SCRIPT = "fraisier-textfile"
# What pip writes for `fraisier = "fraisier_textfile.cli.dispatch:script"` (pyproject's [project.scripts]).
TEMPLATE = """#!{interpreter}
# -*- coding: utf-8 -*-
import re
import sys
from fraisier_textfile.cli.dispatch import script
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit(script())
"""
# A `fraisier` this may replace: a console script of Fraisier's or of ours, as pip writes them (0.2.0's
# called dispatch.main).
REPLACEABLE = ("from fraisier.cli import main", "from fraisier_textfile.cli.dispatch import script",
               "from fraisier_textfile.cli.dispatch import main")


def scripts_directory() -> Path:
    """Where ``fraisier-textfile`` was started from (so a ``pip install --user`` copy writes to ~/.local/bin),
    else the running interpreter's scripts directory (a venv's bin)."""
    started = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if started is not None and started.name == OUR_SCRIPT and started.is_file():
        return Path(os.path.abspath(started)).parent
    return Path(sysconfig.get_path("scripts"))


def install_dispatcher(directory: Path | None = None) -> Path:
    """Write the ``fraisier`` dispatcher into ``directory`` (default: beside ``fraisier-textfile``), replacing
    Fraisier's script; returns its path. Anything else found there is left as it is, and refused."""
    directory = scripts_directory() if directory is None else directory
    target = directory / SCRIPT
    try:
        found = os.lstat(target)
    except FileNotFoundError:
        found = None
    except OSError as error:
        raise InvalidValueError(f"cannot look at {target}: {error.strerror}") from None
    if found is not None:
        if not stat.S_ISREG(found.st_mode):
            kind = "a symlink" if stat.S_ISLNK(found.st_mode) else "a directory" if stat.S_ISDIR(found.st_mode) \
                else "not a regular file"
            # Never followed nor opened: a FIFO there would hang the open, a symlink would write elsewhere.
            raise InvalidValueError(f"{target} is {kind}, not a script pip wrote: remove it, then run this again")
        with open(target, "rb") as opened:
            head = opened.read(4096).decode("utf-8", errors="replace")
        if not any(line in head for line in REPLACEABLE):
            raise InvalidValueError(
                f"{target} is neither Fraisier's script nor ours: move it aside, then run this again"
            )
    if not sys.executable or any(character.isspace() for character in sys.executable):
        # A #! line ends at the first blank: the kernel would run another program.
        raise InvalidValueError(
            f"this Python's path ({sys.executable!r}) holds a blank, which a #! line cannot: reinstall the "
            f"package into a venv whose path has none, or run `python -m fraisier_textfile` instead of `fraisier`"
        )
    text = TEMPLATE.format(interpreter=sys.executable)
    try:
        write_atomically(target, text, 0o755)
    except OSError as error:
        raise InvalidValueError(
            f"cannot write {target}: {error.strerror} (run it as the user who installed the package)"
        ) from None
    return target


def write_atomically(target: Path, text: str, mode: int) -> None:
    """``target`` holds ``text`` with ``mode``, or is left as it was: a temporary file of a name no one else
    holds (mkstemp), renamed over it. Only that file is removed on failure."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as opened:
            opened.write(text)
        os.chmod(temporary, mode)  # mkstemp makes it 0600, whatever the umask
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
