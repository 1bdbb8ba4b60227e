"""Basic auth: the ``Authorization`` header read strictly."""

from __future__ import annotations

import base64

import pytest

from fraisier_textfile.serve.basic_auth import parse_basic_authorization

from .web_configs import header


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (header("prometheus", "pass:word"), ("prometheus", "pass:word")),
        ("basic " + base64.b64encode(b"u:").decode(), ("u", "")),
        (header("ünï", "cödé"), ("ünï", "cödé")),
        (None, None),
        ("", None),
        ("Bearer abc", None),
        ("Basic", None),
        ("Basic !!!", None),
        ("Basic " + base64.b64encode(b"no colon").decode(), None),
        ("Basic " + base64.b64encode(b"\xff:x").decode(), None),
    ],
)
def test_basic_authorization_headers_are_parsed_strictly(value: str | None, expected: tuple[str, str] | None) -> None:
    assert parse_basic_authorization(value) == expected
