"""The web config of ``fraisier metrics``: the exporter-toolkit file that Prometheus exporters share.

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional; then client_ca_file is required
      client_ca_file: clients-ca.crt
      min_version: TLS12                             # optional; TLS12 by default
    basic_auth_users:
      prometheus: $2b$12$...                         # a bcrypt hash

Paths are relative to the directory of the config file. Validation is strict: an unknown key, a key of the
format that is not supported here, a wrong type or a value that is not a bcrypt hash is an error naming the
file and the key. Like the exporters, a running server re-reads the file when it changes (see
``live_config``); a change that does not validate is logged and the last good config stays in force.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fraisier_textfile.errors import WebConfigError

CLIENT_AUTH_TYPES: dict[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
DEFAULT_MIN_VERSION = "TLS12"

TOP_LEVEL_KEYS = ("tls_server_config", "basic_auth_users")
TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version")
# Keys of the exporter-toolkit format that this server does not implement: naming them as such is more
# helpful than calling them unknown.
UNSUPPORTED_KEYS: dict[str, str] = {
    "http_server_config": "remove it (fraisier metrics speaks HTTP/1.1 and sets no extra headers)",
    "rate_limit": "remove it",
    "tls_server_config.cert": "put the certificate in a file and give cert_file",
    "tls_server_config.key": "put the key in a file and give key_file",
    "tls_server_config.client_ca": "put the CA certificates in a file and give client_ca_file",
    "tls_server_config.client_allowed_sans": "remove it, or issue client certificates from a dedicated CA",
    "tls_server_config.cipher_suites": "remove it (Python's TLS defaults apply)",
    "tls_server_config.curve_preferences": "remove it (Python's TLS defaults apply)",
    "tls_server_config.prefer_server_cipher_suites": "remove it",
}
UNSUPPORTED_CLIENT_AUTH_TYPES = ("RequestClientCert", "RequireAnyClientCert")

_BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}\Z")
HASH_HOWTO = """python3 -c 'import bcrypt; print(bcrypt.hashpw(b"PASSWORD", bcrypt.gensalt()).decode())'"""


@dataclass(frozen=True)
class TLSSettings:
    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: str = DEFAULT_MIN_VERSION
    max_version: str | None = None

    def files(self) -> tuple[Path, ...]:
        return (self.cert_file, self.key_file) + ((self.client_ca_file,) if self.client_ca_file else ())


@dataclass(frozen=True)
class WebConfig:
    path: Path
    tls: TLSSettings | None = None
    basic_auth_users: Mapping[str, str] = field(default_factory=dict)
    """User name -> bcrypt hash. Empty: no authentication."""


# Loading


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice (silently keeping the last one would hide a mistake)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Hashable] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if isinstance(key, Hashable):
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_web_config(path: Path | str) -> WebConfig:
    """Read and validate a web config file. Raises WebConfigError, one line naming the file and the fix."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise WebConfigError(
            path, f"cannot read the web config {path}: {error.strerror or error}; check the path and its permissions"
        ) from None
    except UnicodeDecodeError as error:
        raise WebConfigError(
            path, f"web config {path} is not UTF-8 text (byte {error.start}); save it as UTF-8"
        ) from None
    try:
        content = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: builds plain data only
    except yaml.YAMLError as error:
        raise WebConfigError(
            path, f"web config {path} is not valid YAML: {_yaml_problem(error)}; fix the syntax"
        ) from None
    if content is None:
        return WebConfig(path)
    if not isinstance(content, dict):
        raise WebConfigError(
            path, f"web config {path} must be a mapping with tls_server_config and/or basic_auth_users at the top"
        )
    _check_keys(path, content, TOP_LEVEL_KEYS, "")
    return WebConfig(
        path,
        _tls_settings(path, content.get("tls_server_config")),
        _basic_auth_users(path, content.get("basic_auth_users")),
    )


def _yaml_problem(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        problem = error.problem or error.context or "syntax error"
        return f"line {error.problem_mark.line + 1}, column {error.problem_mark.column + 1}: {problem}"
    return " ".join(str(error).split())


def _check_keys(path: Path, mapping: dict[Any, Any], known: tuple[str, ...], prefix: str) -> None:
    for key in mapping:
        dotted = f"{prefix}{key}"
        if dotted in UNSUPPORTED_KEYS:
            raise WebConfigError(
                path, f"web config {path}: {dotted} is not supported by fraisier metrics: {UNSUPPORTED_KEYS[dotted]}"
            )
        if key not in known:
            where = f"in {prefix[:-1]} " if prefix else "at the top "
            raise WebConfigError(
                path,
                f"web config {path}: unknown key {dotted!r}: the keys allowed {where}are {', '.join(known)}",
            )


def _text(path: Path, mapping: dict[Any, Any], key: str, dotted: str) -> str | None:
    value = mapping.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise WebConfigError(path, f"web config {path}: {dotted} must be a non-empty string, not {value!r}")
    return value


def _tls_settings(path: Path, section: object) -> TLSSettings | None:
    if section is None:
        return None
    if not isinstance(section, dict):
        raise WebConfigError(path, f"web config {path}: tls_server_config must be a mapping of {', '.join(TLS_KEYS)}")
    _check_keys(path, section, TLS_KEYS, "tls_server_config.")
    values = {key: _text(path, section, key, f"tls_server_config.{key}") for key in TLS_KEYS}
    if not any(values.values()):
        return None  # an empty section turns TLS off, as in the exporters
    base = path.parent

    def file(key: str) -> Path | None:
        value = values[key]
        return None if value is None else base / os.path.expanduser(value)

    cert_file, key_file, client_ca_file = file("cert_file"), file("key_file"), file("client_ca_file")
    for name, given in (("cert_file", cert_file), ("key_file", key_file)):
        if given is None:
            raise WebConfigError(
                path, f"web config {path}: tls_server_config has no {name}: give both cert_file and key_file"
            )
    assert cert_file is not None and key_file is not None
    client_auth_type = values["client_auth_type"] or "NoClientCert"
    if client_auth_type in UNSUPPORTED_CLIENT_AUTH_TYPES:
        raise WebConfigError(
            path,
            f"web config {path}: client_auth_type {client_auth_type} (client certificates accepted unverified) is "
            "not supported: use RequireAndVerifyClientCert or VerifyClientCertIfGiven with client_ca_file",
        )
    if client_auth_type not in CLIENT_AUTH_TYPES:
        raise WebConfigError(
            path,
            f"web config {path}: unknown client_auth_type {client_auth_type!r}: use one of "
            f"{', '.join(CLIENT_AUTH_TYPES)}",
        )
    verifies = CLIENT_AUTH_TYPES[client_auth_type] is not ssl.CERT_NONE
    if verifies and client_ca_file is None:
        raise WebConfigError(
            path,
            f"web config {path}: client_auth_type {client_auth_type} needs client_ca_file, the CA that signs the "
            "client certificates",
        )
    if not verifies and client_ca_file is not None:
        raise WebConfigError(
            path,
            f"web config {path}: client_ca_file is given but client_auth_type is {client_auth_type}: set "
            "client_auth_type to RequireAndVerifyClientCert (or VerifyClientCertIfGiven)",
        )
    min_version = values["min_version"] or DEFAULT_MIN_VERSION
    max_version = values["max_version"]
    for name, version in (("min_version", min_version), ("max_version", max_version)):
        if version is not None and version not in TLS_VERSIONS:
            raise WebConfigError(
                path, f"web config {path}: unknown {name} {version!r}: use one of {', '.join(TLS_VERSIONS)}"
            )
    if max_version is not None and TLS_VERSIONS[max_version] < TLS_VERSIONS[min_version]:
        raise WebConfigError(
            path, f"web config {path}: max_version {max_version} is below min_version {min_version}: raise it"
        )
    return TLSSettings(cert_file, key_file, client_auth_type, client_ca_file, min_version, max_version)


def _basic_auth_users(path: Path, section: object) -> dict[str, str]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise WebConfigError(path, f"web config {path}: basic_auth_users must be a mapping of user name to bcrypt hash")
    users: dict[str, str] = {}
    for user, hashed in section.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise WebConfigError(
                path, f"web config {path}: basic_auth_users has the user name {user!r}: use a non-empty string "
                "without ':' (quote it if YAML reads it as something else)"
            )
        if not isinstance(hashed, str) or not _BCRYPT_HASH.match(hashed):
            raise WebConfigError(
                path,
                f"web config {path}: basic_auth_users.{user} is not a bcrypt hash: give the output of {HASH_HOWTO}",
            )
        users[user] = hashed
    return users
