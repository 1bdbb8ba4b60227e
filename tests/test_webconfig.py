"""The web config of ``fraisier metrics``: strict validation, TLS contexts, basic auth, reloading."""

from __future__ import annotations

import base64
import logging
import os
import ssl
from pathlib import Path

import bcrypt
import pytest

from fraisier_textfile.errors import FraisierTextfileError, WebConfigError
from fraisier_textfile.serve.webconfig import (
    LiveWebConfig,
    WebConfig,
    load_web_config,
    make_ssl_context,
    parse_basic_authorization,
)

from .tls import Certificates, make_certificates


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certificates"))


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


# Loading


def test_a_full_config_is_read_with_paths_relative_to_its_directory(tmp_path: Path) -> None:
    hash_ = hashed("secret")
    config = write(tmp_path / "web.yml", f"""\
tls_server_config:
  cert_file: tls/server.crt
  key_file: /etc/keys/server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: tls/ca.crt
  min_version: TLS13
basic_auth_users:
  prometheus: {hash_}
  "123": {hash_}
""")
    loaded = load_web_config(config)
    assert loaded.tls is not None
    assert loaded.tls.cert_file == tmp_path / "tls" / "server.crt"
    assert loaded.tls.key_file == Path("/etc/keys/server.key")
    assert loaded.tls.client_ca_file == tmp_path / "tls" / "ca.crt"
    assert loaded.tls.client_auth_type == "RequireAndVerifyClientCert"
    assert loaded.tls.min_version == "TLS13"
    assert dict(loaded.basic_auth_users) == {"prometheus": hash_, "123": hash_}


@pytest.mark.parametrize("text", ["", "# nothing\n", "tls_server_config: {}\nbasic_auth_users: {}\n",
                                  "tls_server_config:\nbasic_auth_users:\n"],
                         ids=["empty", "comment", "empty-sections", "null-sections"])
def test_an_empty_config_means_plain_http_without_authentication(tmp_path: Path, text: str) -> None:
    assert load_web_config(write(tmp_path / "web.yml", text)) == WebConfig(tmp_path / "web.yml")


VALID_TLS = "tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\n"

BAD = {
    "not-yaml": ("tls_server_config: [\n", "is not valid YAML: line 2, column 1"),
    "tab-indented": ("tls_server_config:\n\tcert_file: x\n", "is not valid YAML: line 2"),
    "a-list": ("- tls_server_config\n", "must be a mapping with tls_server_config and/or basic_auth_users"),
    "a-string": ("hello\n", "must be a mapping"),
    "unknown-top-level-key": ("tls_config: {}\n", "unknown key 'tls_config': the keys allowed at the top are "
                              "tls_server_config, basic_auth_users"),
    "unknown-tls-key": (VALID_TLS + "  ca_file: x\n", "unknown key 'tls_server_config.ca_file': the keys allowed in "
                        "tls_server_config are cert_file, key_file"),
    "duplicate-key": (VALID_TLS + "  cert_file: t.crt\n", "the key 'cert_file' is given twice"),
    "unsupported-section": ("http_server_config:\n  http2: false\n",
                            "http_server_config is not supported by fraisier metrics: remove it"),
    "unsupported-tls-key": (VALID_TLS + "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
                            "tls_server_config.cipher_suites is not supported by fraisier metrics"),
    "inline-cert": ("tls_server_config:\n  cert: PEM\n  key_file: s.key\n",
                    "tls_server_config.cert is not supported by fraisier metrics: put the certificate in a file"),
    "tls-not-a-mapping": ("tls_server_config: yes\n", "tls_server_config must be a mapping"),
    "no-key-file": ("tls_server_config:\n  cert_file: s.crt\n", "tls_server_config has no key_file"),
    "no-cert-file": ("tls_server_config:\n  key_file: s.key\n", "tls_server_config has no cert_file"),
    "cert-file-not-text": ("tls_server_config:\n  cert_file: [a]\n  key_file: s.key\n",
                           "tls_server_config.cert_file must be a non-empty string"),
    "unknown-client-auth": (VALID_TLS + "  client_auth_type: Required\n",
                            "unknown client_auth_type 'Required': use one of NoClientCert"),
    "unverified-client-auth": (VALID_TLS + "  client_auth_type: RequireAnyClientCert\n",
                               "client_auth_type RequireAnyClientCert (client certificates accepted unverified) is not "
                               "supported"),
    "verification-without-ca": (VALID_TLS + "  client_auth_type: RequireAndVerifyClientCert\n",
                                "client_auth_type RequireAndVerifyClientCert needs client_ca_file"),
    "ca-without-verification": (VALID_TLS + "  client_ca_file: ca.crt\n",
                                "client_ca_file is given but client_auth_type is NoClientCert"),
    "unknown-min-version": (VALID_TLS + "  min_version: TLS14\n",
                            "unknown min_version 'TLS14': use one of TLS10, TLS11, TLS12, TLS13"),
    "min-version-not-text": (VALID_TLS + "  min_version: 1.2\n", "tls_server_config.min_version must be a non-empty"),
    "max-below-min": (VALID_TLS + "  min_version: TLS13\n  max_version: TLS12\n",
                      "max_version TLS12 is below min_version TLS13"),
    "users-not-a-mapping": ("basic_auth_users: [prometheus]\n", "basic_auth_users must be a mapping"),
    "plain-password": ("basic_auth_users:\n  prometheus: secret\n",
                       "basic_auth_users.prometheus is not a bcrypt hash: give the output of python3 -c"),
    "truncated-hash": ("basic_auth_users:\n  prometheus: $2b$12$abc\n", "basic_auth_users.prometheus is not a bcrypt"),
    "null-hash": ("basic_auth_users:\n  prometheus:\n", "basic_auth_users.prometheus is not a bcrypt hash"),
    "user-with-colon": ("basic_auth_users:\n  'a:b': $2b$04$" + "a" * 53 + "\n", "the user name 'a:b'"),
    "user-not-text": ("basic_auth_users:\n  [a]: x\n", "is not valid YAML"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_an_invalid_config_is_one_line_naming_the_file_and_the_problem(tmp_path: Path, case: str) -> None:
    text, expected = BAD[case]
    config = write(tmp_path / "web.yml", text)
    with pytest.raises(WebConfigError) as raised:
        load_web_config(config)
    message = str(raised.value)
    assert "\n" not in message
    assert str(config) in message
    assert expected in message
    assert raised.value.path == config
    assert isinstance(raised.value, FraisierTextfileError)


def test_a_missing_or_binary_config_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError, match="cannot read the web config .*absent.yml: No such file"):
        load_web_config(tmp_path / "absent.yml")
    (tmp_path / "binary.yml").write_bytes(b"basic_auth_users: \xff\n")
    with pytest.raises(WebConfigError, match="binary.yml is not UTF-8 text"):
        load_web_config(tmp_path / "binary.yml")
    with pytest.raises(WebConfigError, match="cannot read the web config"):
        load_web_config(tmp_path)  # a directory


# TLS contexts


def tls_config(directory: Path, cert: Path, key: Path, extra: str = "") -> Path:
    return write(directory / "web.yml", f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n{extra}")


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


# Basic auth


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


def test_only_the_right_password_of_a_known_user_is_authorized(tmp_path: Path) -> None:
    config = write(tmp_path / "web.yml", f"basic_auth_users:\n  prometheus: {hashed('secret')}\n"
                                         f"  grafana: {hashed('other')}\n")
    live = LiveWebConfig(config)
    assert live.authorized(header("prometheus", "secret"))
    assert live.authorized(header("prometheus", "secret"))  # the remembered success
    assert live.authorized(header("grafana", "other"))
    assert not live.authorized(header("prometheus", "other"))
    assert not live.authorized(header("grafana", "secret"))
    assert not live.authorized(header("nobody", "secret"))
    assert not live.authorized(header("prometheus", "secret" + "x" * 80))  # beyond bcrypt's 72 bytes
    assert not live.authorized(None)
    assert not live.tls


def test_without_users_every_request_is_authorized(tmp_path: Path) -> None:
    assert LiveWebConfig(write(tmp_path / "web.yml", "")).authorized(None)


def test_a_changed_config_is_reread_and_a_remembered_password_is_forgotten_with_its_hash(tmp_path: Path) -> None:
    config = write(tmp_path / "web.yml", f"basic_auth_users:\n  prometheus: {hashed('old')}\n")
    live = LiveWebConfig(config)
    assert live.authorized(header("prometheus", "old"))
    write(config, f"basic_auth_users:\n  prometheus: {hashed('new')}\n")
    assert not live.authorized(header("prometheus", "old"))
    assert live.authorized(header("prometheus", "new"))
    write(config, f"basic_auth_users:\n  prometheus: {hashed('new')}\n  grafana: {hashed('other')}\n")
    assert live.authorized(header("grafana", "other"))
    write(config, f"basic_auth_users:\n  grafana: {hashed('other')}\n")  # one of two users removed: applied
    assert not live.authorized(header("prometheus", "new"))
    assert live.authorized(header("grafana", "other"))


@pytest.mark.parametrize(
    "text",
    ["", "basic_auth_users:\n", "basic_auth_users:", "basic_auth_users: {}\n", "# all users removed\n"],
    ids=["empty file", "cut after basic_auth_users", "cut before the newline", "no users", "only a comment"],
)
def test_a_reload_that_would_turn_authentication_off_is_refused_and_logged_at_error(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = write(tmp_path / "web.yml", f"basic_auth_users:\n  prometheus: {hashed('secret')}\n")
    live = LiveWebConfig(config)
    with caplog.at_level(logging.INFO, logger="fraisier_textfile.serve.webconfig"):
        write(config, text)
        assert not live.authorized(None)
        assert live.authorized(header("prometheus", "secret"))
        assert not live.reload()  # a forced re-read (SIGHUP) refuses it too
        assert not live.authorized(None)
    refusals = [record for record in caplog.records if "would turn authentication off" in record.getMessage()]
    assert len(refusals) == 2 and all(record.levelno == logging.ERROR for record in refusals)
    assert refusals[0].getMessage().endswith("the last valid web config stays in force")
    write(config, f"basic_auth_users:\n  grafana: {hashed('new')}\n")
    assert live.authorized(header("grafana", "new"))  # a valid file later is taken again


def test_a_config_without_users_at_start_may_gain_them_by_a_reload(tmp_path: Path) -> None:
    config = write(tmp_path / "web.yml", "")
    live = LiveWebConfig(config)
    assert live.authorized(None)
    write(config, f"basic_auth_users:\n  prometheus: {hashed('secret')}\n")
    assert live.reload()
    assert not live.authorized(None)


def test_an_invalid_change_is_logged_and_the_last_valid_config_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = write(tmp_path / "web.yml", f"basic_auth_users:\n  prometheus: {hashed('secret')}\n")
    live = LiveWebConfig(config)
    with caplog.at_level(logging.ERROR, logger="fraisier_textfile.serve.webconfig"):
        for broken in ("basic_auth_users: [\n", "basic_auth_users:\n  prometheus: secret\n", "unknown: 1\n"):
            write(config, broken)
            assert live.authorized(header("prometheus", "secret"))
            assert not live.authorized(None)
        config.unlink()
        assert live.authorized(header("prometheus", "secret"))
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 4  # once per version of the file, not once per request
    assert all(message.endswith("the last valid web config stays in force") for message in messages)
    write(config, f"basic_auth_users:\n  prometheus: {hashed('again')}\n")
    assert live.authorized(header("prometheus", "again"))


def test_tls_cannot_be_turned_off_by_a_reload(tmp_path: Path, certificates: Certificates,
                                              caplog: pytest.LogCaptureFixture) -> None:
    config = tls_config(tmp_path, certificates.server.cert, certificates.server.key)
    live = LiveWebConfig(config)
    context = live.ssl_context()
    assert live.tls and context is not None
    with caplog.at_level(logging.ERROR, logger="fraisier_textfile.serve.webconfig"):
        write(config, "")
        assert live.ssl_context() is context
    assert "now turns TLS off: restart fraisier metrics" in caplog.text


@pytest.mark.parametrize(
    "change",
    ["client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: {ca}\n", "min_version: TLS10\n",
     "max_version: TLS12\n"],
    ids=["client certificates now optional", "older clients allowed", "max_version added"],
)
def test_a_reload_that_changes_the_tls_policy_is_refused(
    tmp_path: Path, certificates: Certificates, caplog: pytest.LogCaptureFixture, change: str
) -> None:
    required = f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {certificates.ca}\n"
    config = tls_config(tmp_path, certificates.server.cert, certificates.server.key, required)
    live = LiveWebConfig(config)
    context = live.ssl_context()
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED
    changed = "  " + change.format(ca=certificates.ca) if "client_auth_type" in change else required + "  " + change
    with caplog.at_level(logging.ERROR, logger="fraisier_textfile.serve.webconfig"):
        tls_config(tmp_path, certificates.server.cert, certificates.server.key, changed)
        assert live.ssl_context() is context
        assert not live.reload()
    assert "only changes with a restart of fraisier metrics" in caplog.text
    tls = live.current().tls
    assert tls is not None and tls.client_auth_type == "RequireAndVerifyClientCert"


def test_a_renewed_certificate_gives_a_new_context_and_a_bad_one_keeps_the_old(
    tmp_path: Path, certificates: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    cert.write_bytes(certificates.server.cert.read_bytes())
    key.write_bytes(certificates.server.key.read_bytes())
    live = LiveWebConfig(tls_config(tmp_path, cert, key))
    first = live.ssl_context()
    assert live.ssl_context() is first  # unchanged files: the same context
    write(cert, certificates.other_server.cert.read_text())  # the key does not match it yet
    with caplog.at_level(logging.ERROR, logger="fraisier_textfile.serve.webconfig"):
        assert live.ssl_context() is first
    assert "is not the key of cert_file" in caplog.text
    write(key, certificates.other_server.key.read_text())
    renewed = live.ssl_context()
    assert renewed is not None and renewed is not first


def test_a_live_config_that_is_invalid_at_start_raises(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError, match="unknown key 'tls'"):
        LiveWebConfig(write(tmp_path / "web.yml", "tls: {}\n"))
