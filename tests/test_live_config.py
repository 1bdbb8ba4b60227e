"""The web config in force: who is authorized, re-reading a changed file, and refusing a reload that would weaken
the server or break TLS."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest

from fraisier_textfile.errors import WebConfigError
from fraisier_textfile.serve.live_config import LiveWebConfig

from .processes import copied_as_built
from .tls import Certificates
from .web_configs import hashed, header, tls_config, write


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
    with caplog.at_level(logging.INFO, logger="fraisier_textfile.serve.live_config"):
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
    with caplog.at_level(logging.ERROR, logger="fraisier_textfile.serve.live_config"):
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
    with caplog.at_level(logging.ERROR, logger="fraisier_textfile.serve.live_config"):
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
    with caplog.at_level(logging.ERROR, logger="fraisier_textfile.serve.live_config"):
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
    with caplog.at_level(logging.ERROR, logger="fraisier_textfile.serve.live_config"):
        assert live.ssl_context() is first
    assert "is not the key of cert_file" in caplog.text
    write(key, certificates.other_server.key.read_text())
    renewed = live.ssl_context()
    assert renewed is not None and renewed is not first


def test_a_live_config_that_is_invalid_at_start_raises(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError, match="unknown key 'tls'"):
        LiveWebConfig(write(tmp_path / "web.yml", "tls: {}\n"))


def test_a_config_copied_over_with_the_same_size_and_mtime_is_reread(tmp_path: Path) -> None:
    """A bcrypt hash is as long as another: only the ctime tells the new config from the old."""
    config = tmp_path / "web.yml"
    old = copied_as_built(config, f"basic_auth_users:\n  prometheus: {hashed('old')}\n")
    live = LiveWebConfig(config)
    assert live.authorized(header("prometheus", "old"))
    new = copied_as_built(config, f"basic_auth_users:\n  prometheus: {hashed('new')}\n")
    assert (new.st_ino, new.st_size, new.st_mtime_ns) == (old.st_ino, old.st_size, old.st_mtime_ns)
    assert live.authorized(header("prometheus", "new"))
