"""The web config file of ``fraisier metrics``: read strictly, paths relative to it, each problem one line naming
the file and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from fraisier_textfile.errors import FraisierTextfileError, WebConfigError
from fraisier_textfile.serve.webconfig import WebConfig, load_web_config

from .web_configs import hashed, write


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
