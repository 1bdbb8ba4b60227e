"""The web config in force in a running server: re-read when the file changes or on SIGHUP, its TLS context
rebuilt when the certificate, key or CA file changes, and a change that would weaken the server without a restart
refused (the last valid config stays)."""

from __future__ import annotations

import logging
import os
import ssl
import threading
from pathlib import Path

from fraisier_textfile.errors import WebConfigError
from fraisier_textfile.serve.basic_auth import PasswordChecker, parse_basic_authorization
from fraisier_textfile.serve.tls_context import make_ssl_context
from fraisier_textfile.serve.webconfig import WebConfig, load_web_config

log = logging.getLogger(__name__)

# What decides who may connect and how: fixed for the life of the server. The certificate and key may change.
TLS_POLICY_KEYS = ("client_auth_type", "client_ca_file", "min_version", "max_version")


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    # The ctime too: a file copied over in place with its source's mtime kept (cp -p, rsync -t) from a build that
    # gives every file one mtime (Nix, SOURCE_DATE_EPOCH) keeps its inode, its mtime and, with a password's bcrypt
    # hash or a renewed certificate, its size. Nobody sets a ctime.
    return (status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


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
        self._checker = PasswordChecker()
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
