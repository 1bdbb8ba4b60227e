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
``LiveWebConfig``); a change that does not validate is logged and the last good config stays in force.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import ssl
import threading
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from fraisier_textfile.errors import WebConfigError

log = logging.getLogger(__name__)

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
# What decides who may connect and how: fixed for the life of the server. The certificate and key may change.
TLS_POLICY_KEYS = ("client_auth_type", "client_ca_file", "min_version", "max_version")
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


# TLS


def _no_password() -> bytes:
    return b""  # never prompt on the terminal for the passphrase of an encrypted key: fail instead


def make_ssl_context(config: WebConfig) -> ssl.SSLContext:
    """The server's TLS context for ``config.tls``. Raises WebConfigError naming the file that cannot be used."""
    tls = config.tls
    if tls is None:
        raise ValueError("make_ssl_context needs a config with tls_server_config")
    where = f"(web config {config.path})"
    named = (("cert_file", tls.cert_file), ("key_file", tls.key_file), ("client_ca_file", tls.client_ca_file))
    for name, file in named:
        if file is None:
            continue
        try:
            with open(file, "rb"):
                pass
        except OSError as error:
            raise WebConfigError(
                config.path,
                f"cannot read {name} {file} {where}: {error.strerror or error}; fix the path or permissions",
            ) from None
    # PROTOCOL_TLS_SERVER loads no system CAs: only client_ca_file may vouch for a client certificate.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    if tls.max_version is not None:
        context.maximum_version = TLS_VERSIONS[tls.max_version]
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=tls.cert_file)
    except (ssl.SSLError, OSError) as error:
        raise WebConfigError(
            config.path, f"cert_file {tls.cert_file} {where} holds no valid PEM certificate ({_reason(error)}); "
            "give the server certificate in PEM form"
        ) from None
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file, password=_no_password)
    except (ssl.SSLError, OSError) as error:
        if getattr(error, "reason", None) == "KEY_VALUES_MISMATCH":
            raise WebConfigError(
                config.path, f"key_file {tls.key_file} {where} is not the key of cert_file {tls.cert_file}; "
                "give the matching pair"
            ) from None
        raise WebConfigError(
            config.path, f"key_file {tls.key_file} {where} is not a usable PEM private key ({_reason(error)}); "
            "give an unencrypted PEM key"
        ) from None
    if tls.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except (ssl.SSLError, OSError) as error:
            raise WebConfigError(
                config.path, f"client_ca_file {tls.client_ca_file} {where} holds no valid PEM certificate "
                f"({_reason(error)}); give the CA certificate(s) in PEM form"
            ) from None
    context.verify_mode = CLIENT_AUTH_TYPES[tls.client_auth_type]
    return context


def _reason(error: Exception) -> str:
    reason = getattr(error, "reason", None)
    return str(reason) if reason else " ".join(str(error).split())


# Basic auth


def parse_basic_authorization(header: str | None) -> tuple[str, str] | None:
    """``(user, password)`` from an ``Authorization: Basic ...`` header, None if absent or malformed."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


class _PasswordChecker:
    """bcrypt costs tens of milliseconds by design; Prometheus sends the same credentials every scrape. So
    a success is remembered, by a digest of user, hash and password, and the next check is a dict look-up.
    Failures are not remembered: guessing stays as slow as bcrypt makes it."""

    _MAXIMUM_REMEMBERED = 256

    def __init__(self) -> None:
        self._remembered: set[bytes] = set()

    def check(self, users: Mapping[str, str], user: str, password: str) -> bool:
        hashed = users.get(user)
        digest = hashlib.sha256(f"{user}\0{hashed}\0{password}".encode()).digest()
        if hashed is not None and digest in self._remembered:
            return True
        # An unknown user costs a bcrypt check too, so that response times do not tell which users exist.
        reference = hashed if hashed is not None else next(iter(users.values()))
        try:
            matches = bcrypt.checkpw(password.encode("utf-8"), reference.encode("ascii"))
        except ValueError:  # longer than bcrypt's 72 bytes, or a hash bcrypt refuses: no match
            matches = False
        if not matches or hashed is None:
            return False
        if len(self._remembered) >= self._MAXIMUM_REMEMBERED:
            self._remembered.clear()
        self._remembered.add(digest)
        return True


# The config in force


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_ino, status.st_size, status.st_mtime_ns)


class LiveWebConfig:
    """The web config as it is now. Re-read at each request when the file changed (one stat when it did not),
    and by ``reload()`` (on SIGHUP); the TLS context is rebuilt when the config, the certificate, the key or
    the CA file changed, so that a renewed certificate is served without a restart. A change that does not
    validate is logged at error level and the last valid config stays in force until the file changes again.
    So is a change that would weaken the server without a restart: removing every basic-auth user (an empty
    or half-written file), turning TLS on or off, or changing its policy (``TLS_POLICY_KEYS``)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._checker = _PasswordChecker()
        self._config_identity = _identity(self.path)
        self._config = load_web_config(self.path)
        self._context: ssl.SSLContext | None = None
        self._tls_identity: tuple[object, ...] = ()
        if self._config.tls is not None:
            self._tls_identity = self._tls_files_identity(self._config)
            self._context = make_ssl_context(self._config)

    @property
    def tls(self) -> bool:
        return self._context is not None

    def current(self) -> WebConfig:
        identity = _identity(self.path)
        if identity != self._config_identity:
            with self._lock:
                if identity != self._config_identity:
                    self._config_identity = identity  # tried once per version of the file, valid or not
                    self._reload()
        return self._config

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for a new connection, None when TLS is off."""
        config = self.current()
        if self._context is None or config.tls is None:
            return self._context
        identity = self._tls_files_identity(config)
        if identity != self._tls_identity:
            with self._lock:
                if identity != self._tls_identity:
                    self._tls_identity = identity
                    try:
                        self._context = make_ssl_context(config)
                        log.info("web config %s: TLS files reloaded", self.path)
                    except WebConfigError as error:
                        log.error("%s; the previous certificate and key stay in use", error)
        return self._context

    def authorized(self, authorization: str | None) -> bool:
        """Whether a request with this ``Authorization`` header may be served."""
        users = self.current().basic_auth_users
        if not users:
            return True
        credentials = parse_basic_authorization(authorization)
        if credentials is None:
            return False
        return self._checker.check(users, *credentials)

    def reload(self) -> bool:
        """Re-read the file now, even if it looks unchanged (``SIGHUP``). True if the new config is in force;
        False if it was refused (logged at error level; the last good config stays)."""
        with self._lock:
            self._config_identity = _identity(self.path)
            return self._reload()

    def _reload(self) -> bool:
        try:
            config = load_web_config(self.path)
            self._refuse_weakening(config)
            if config.tls is not None and config.tls != self._config.tls:
                tls_identity = self._tls_files_identity(config)
                self._context = make_ssl_context(config)
                self._tls_identity = tls_identity
        except WebConfigError as error:
            log.error("%s; the last valid web config stays in force", error)
            return False
        self._config = config
        log.info("web config %s reloaded", self.path)
        return True

    def _refuse_weakening(self, config: WebConfig) -> None:
        # A file being rewritten in place can be read empty, or cut just after "basic_auth_users:": both read
        # as "no users". Taking that as the operator's wish would serve everyone without a password, so
        # turning authentication off, like changing TLS, takes a restart.
        if self._config.basic_auth_users and not config.basic_auth_users:
            raise WebConfigError(
                self.path,
                f"web config {self.path} now has no basic_auth_users, which would turn authentication off (an empty "
                "or half-written file reads so too): restart fraisier metrics to serve without authentication",
            )
        before, after = self._config.tls, config.tls
        if (before is None) != (after is None):
            state = "off" if after is None else "on"
            raise WebConfigError(
                self.path, f"web config {self.path} now turns TLS {state}: restart fraisier metrics for that"
            )
        if before is not None and after is not None:
            changed = [name for name in TLS_POLICY_KEYS if getattr(before, name) != getattr(after, name)]
            if changed:
                raise WebConfigError(
                    self.path,
                    f"web config {self.path} changes tls_server_config.{', '.join(changed)}: who may connect "
                    "and how only changes with a restart of fraisier metrics (renewed cert_file and key_file "
                    "are taken at once)",
                )

    @staticmethod
    def _tls_files_identity(config: WebConfig) -> tuple[object, ...]:
        return tuple(_identity(file) for file in config.tls.files()) if config.tls else ()
