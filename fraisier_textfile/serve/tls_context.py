"""A TLS context from a web config's ``tls_server_config``: the certificate, key and client CA files read and
checked, each problem an error naming the file and the fix."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from fraisier_textfile.errors import WebConfigError
from fraisier_textfile.serve.webconfig import CLIENT_AUTH_TYPES, TLS_VERSIONS

if TYPE_CHECKING:
    from fraisier_textfile.serve.webconfig import WebConfig


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
