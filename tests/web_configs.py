"""Web config files as an operator writes them, for the tests of serve/'s web config modules."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import bcrypt


def hashed(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def write(path: Path, text: str) -> Path:
    """Replace the file at once, as an editor or a config manager would."""
    staged = path.with_name(path.name + ".new")
    staged.write_text(text)
    os.replace(staged, path)
    return path


def header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def tls_config(directory: Path, cert: Path, key: Path, extra: str = "") -> Path:
    return write(directory / "web.yml", f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n{extra}")
