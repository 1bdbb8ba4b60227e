"""TLS contexts from a web config: clients verified only against the client CA, unusable files named."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from fraisier_textfile.errors import WebConfigError
from fraisier_textfile.serve.tls_context import make_ssl_context
from fraisier_textfile.serve.webconfig import load_web_config

from .tls import Certificates
from .web_configs import tls_config


def test_a_tls_context_verifies_clients_only_against_the_client_ca(tmp_path: Path, certificates: Certificates) -> None:
    plain = make_ssl_context(load_web_config(tls_config(tmp_path, certificates.server.cert, certificates.server.key)))
    assert plain.verify_mode == ssl.CERT_NONE
    assert plain.minimum_version == ssl.TLSVersion.TLSv1_2
    config = tls_config(tmp_path, certificates.server.cert, certificates.server.key,
                        f"  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: {certificates.ca}\n"
                        "  min_version: TLS13\n")
    context = make_ssl_context(load_web_config(config))
    assert context.verify_mode == ssl.CERT_OPTIONAL
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert [authority["subject"] for authority in context.get_ca_certs()] == [((("commonName", "Test CA"),),)]


def test_unusable_tls_files_are_errors_naming_the_file(tmp_path: Path, certificates: Certificates) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")  # bad on purpose
    server, config = certificates.server, tmp_path / "web.yml"
    verify = "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n"
    cases = [
        (tmp_path / "absent.crt", server.key, "", f"cannot read cert_file {tmp_path}/absent.crt (web config {config})"),
        (server.cert, tmp_path / "absent.key", "", f"cannot read key_file {tmp_path}/absent.key"),
        (garbage, server.key, "", f"cert_file {garbage} (web config {config}) holds no valid PEM certificate"),
        (server.key, server.key, "", f"cert_file {server.key} (web config {config}) holds no valid PEM certificate"),
        (server.cert, garbage, "", f"key_file {garbage} (web config {config}) is not a usable PEM private key"),
        (server.cert, certificates.client.key, "",
         f"key_file {certificates.client.key} (web config {config}) is not the key of cert_file {server.cert}"),
        (server.cert, server.key, verify.format(garbage),
         f"client_ca_file {garbage} (web config {config}) holds no valid PEM certificate"),
        (server.cert, server.key, verify.format(tmp_path), f"cannot read client_ca_file {tmp_path} "),
    ]
    for cert, key, extra, expected in cases:
        loaded = load_web_config(tls_config(tmp_path, cert, key, extra))
        with pytest.raises(WebConfigError) as raised:
            make_ssl_context(loaded)
        assert expected in str(raised.value)
        assert "\n" not in str(raised.value)
        assert raised.value.path == config


def test_an_encrypted_key_is_refused_without_asking_for_a_passphrase(
    tmp_path: Path, certificates: Certificates
) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(certificates.server.key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"passphrase")))
    with pytest.raises(WebConfigError, match="is not a usable PEM private key"):
        make_ssl_context(load_web_config(tls_config(tmp_path, certificates.server.cert, encrypted)))
