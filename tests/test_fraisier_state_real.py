"""Real Fraisier 0.84.2 deployments (its ``APIDeployer(...).execute()``, real git, a local bare repository)
reach the textfile through the state source, exactly once.

Only what needs root on the host is kept off it: Fraisier's lock directory is under ``/run``, so each deployment
runs in a mount namespace of its own with a tmpfs there (``unshare --mount``). The fraise has no systemd unit
and no health check URL (nothing to restart), so no systemctl stub is needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fraisier_textfile import TextfileStore
from fraisier_textfile.changes import Changes
from fraisier_textfile.sources.fraisier_state import participants

from .processes import binary
from .test_fraisier_state import READER, reader_user  # noqa: F401  (a fixture)
from .values import sample_values

REPOSITORY = Path(__file__).resolve().parent.parent
DEPLOY = """\
import json, sys
from pathlib import Path
from fraisier.deployers.api import APIDeployer
root, install = Path(sys.argv[1]), sys.argv[2]
config = {
    "fraise_name": "api", "environment": "production", "app_path": str(root / "app"),
    "clone_url": str(root / "origin.git"), "branch": "main", "git_repo": str(root / "server.git"),
    "status_dir": str(root / "status"),
}
if install != "-":
    config["install"] = {"command": ["sh", "-c", install]}
result = APIDeployer(config).execute()
print(json.dumps({"status": result.status.value, "error": result.error_message}))
"""
CONFIG = "fraises:\n  api:\n    type: api\n    environments:\n      production: {app_path: /srv/api}\n"


class Site:
    """A fraise's origin repository, Fraisier's server-side bare repository, its app directory and state."""

    def __init__(self, root: Path) -> None:
        self.root = root
        git = binary("git")
        self.git = git
        (root / "app").mkdir(parents=True)
        (root / "status").mkdir()
        (root / "fraises.yaml").write_text(CONFIG)  # outside the app repository (else a deploy scaffolds it)
        subprocess.run([git, "init", "-q", "--bare", "-b", "main", str(root / "origin.git")], check=True)
        subprocess.run([git, "clone", "-q", str(root / "origin.git"), str(root / "work")], check=True,
                       capture_output=True)
        # Fraisier fetches into an existing bare repository with an origin remote.
        subprocess.run([git, "init", "-q", "--bare", str(root / "server.git")], check=True)
        subprocess.run([git, "-C", str(root / "server.git"), "remote", "add", "origin", str(root / "origin.git")],
                       check=True)
        self.environment = {**os.environ, "FRAISIER_DB_PATH": str(root / "fraisier.db"),
                            "FRAISIER_CONFIG": str(root / "fraises.yaml"),
                            "FRAISIER_STATUS_DIR": str(root / "status"),
                            "FRAISIER_TEXTFILE_FRAISIER_STATE": "on", "PYTHONPATH": str(REPOSITORY),
                            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
                            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}

    def commit(self, text: str) -> None:
        work = str(self.root / "work")
        (self.root / "work" / "app.py").write_text(text)
        subprocess.run([self.git, "-C", work, "add", "."], check=True, env=self.environment)
        subprocess.run([self.git, "-C", work, "commit", "-qm", text], check=True, env=self.environment)
        subprocess.run([self.git, "-C", work, "push", "-q", "origin", "main"], check=True, env=self.environment,
                       capture_output=True)

    def deploy(self, install: str = "-") -> dict[str, str]:
        """One real deployment by Fraisier's APIDeployer, its /run private to it."""
        script = self.root / "deploy.py"
        script.write_text(DEPLOY)
        inner = f'mount -t tmpfs tmpfs /run && mkdir -p /run/fraisier && exec "$0" "{script}" "{self.root}" "$1"'
        result = subprocess.run(
            [binary("unshare"), "--mount", "--propagation", "private", "sh", "-c", inner, sys.executable, install],
            capture_output=True, text=True, env=self.environment, timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        answer = json.loads(result.stdout.strip().splitlines()[-1])
        assert isinstance(answer, dict)
        return answer

    def deploy_daemon(self, textfile_dir: Path) -> None:
        """One real deployment as Fraisier's socket-activated unit runs it (``fraisier deploy-daemon``, a request
        on stdin), through this package's ``fraisier`` dispatcher, as root, its /run private to it."""
        import time

        root = self.root
        (root / "fraises.yaml").write_text(
            "name: shop\nscaffold:\n  deploy_user: root\nfraises:\n  api:\n    type: api\n    environments:\n"
            f"      production:\n        app_path: {root / 'app'}\n        clone_url: {root / 'origin.git'}\n"
            f"        git_repo: {root / 'server.git'}\n        branch: main\n        status_dir: {root / 'status'}\n"
        )
        request = json.dumps({"version": 1, "project": "api", "environment": "production", "branch": "main",
                              "timestamp": int(time.time()), "triggered_by": "test", "options": {"force": True}})
        inner = 'mount -t tmpfs tmpfs /run && mkdir -p /run/fraisier && exec "$0" -c "$1" deploy-daemon --project=api'
        result = subprocess.run(
            [binary("unshare"), "--mount", "--propagation", "private", "sh", "-c", inner, sys.executable, DISPATCH],
            input=request, capture_output=True, text=True, timeout=300,
            env={**self.environment, "FRAISIER_TEXTFILE_DIR": str(textfile_dir)},
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert '"status": "success"' in result.stdout


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    if os.geteuid() != 0:
        message = "a real deployment needs a mount namespace: run it as root (CI does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    made = Site(tmp_path / "site")
    for name in ("FRAISIER_DB_PATH", "FRAISIER_CONFIG", "FRAISIER_STATUS_DIR", "FRAISIER_TEXTFILE_FRAISIER_STATE"):
        monkeypatch.setenv(name, made.environment[name])
    yield made


def refresh(textfile_dir: Path) -> dict[str, float]:
    store = TextfileStore(textfile_dir, participants=participants())
    store.merge(Changes())
    return sample_values(store.path)


SUCCESS = 'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'
ROLLED_BACK = 'fraisier_deployments_total{provider="bare_metal",status="rolled_back",fraise_type="api"}'
FAILED = 'fraisier_deployments_total{provider="bare_metal",status="failed",fraise_type="api"}'
INSTALL_ERRORS = 'fraisier_deployment_errors_total{provider="bare_metal",error_type="install"}'
INSTALL_ROLLBACKS = 'fraisier_rollbacks_total{provider="bare_metal",reason="install"}'


def test_real_fraisier_deployments_a_success_then_a_rolled_back_install_are_counted_once(
    site: Site, textfile_dir: Path
) -> None:
    site.commit("print(1)")
    assert site.deploy()["status"] == "success"
    values = refresh(textfile_dir)
    assert values[SUCCESS] == 1
    assert values['fraisier_deployment_duration_seconds_count{provider="bare_metal",status="success"}'] == 1
    site.commit("print(2)")
    answer = site.deploy(install="exit 3")  # a previous version exists: Fraisier reverts to it
    assert answer["status"] == "rolled_back", answer
    values = refresh(textfile_dir)
    assert values[SUCCESS] == 1 and values[ROLLED_BACK] == 1 and values.get(FAILED, 0) == 0
    assert values[INSTALL_ERRORS] == 1 and values[INSTALL_ROLLBACKS] == 1
    assert values['fraisier_active_deployments{provider="bare_metal"}'] == 0
    assert refresh(textfile_dir) == values


DISPATCH = "import sys; from fraisier_textfile.cli.dispatch import main; sys.argv[0] = 'fraisier'; main()"


def test_a_real_fraisier_deploy_daemon_run_through_the_fraisier_command_is_in_the_textfile_when_it_exits(
    site: Site, textfile_dir: Path
) -> None:
    """What Fraisier's socket-activated unit runs, through this package's ``fraisier`` dispatcher: no refresh,
    no scrape, and the deployment is in the textfile when the command has exited."""
    site.commit("print(1)")
    site.deploy_daemon(textfile_dir)
    assert sample_values(textfile_dir / "fraisier.prom")[SUCCESS] == 1


def test_a_real_fraisier_deploy_run_as_root_beside_the_deploying_users_textfile_directory_is_counted_once_by_it(
    reader_user: tuple[list[str], str, dict[str, str], Path]  # noqa: F811  (the fixture imported above)
) -> None:
    """Fraisier's socket unit runs as root; the textfile directory is the deploying user's. Root's ``fraisier``
    leaves that directory to its writers (creates nothing there), and the user's own reader counts the deployment
    root's Fraisier wrote, once."""
    import pwd

    command, _, environment, root = reader_user
    site = Site(root / "site")
    textfile_dir = root / "textfile"
    textfile_dir.mkdir()
    account = pwd.getpwnam(READER)
    os.chown(textfile_dir, account.pw_uid, account.pw_gid)
    site.commit("print(1)")
    site.deploy_daemon(textfile_dir)
    assert [path.name for path in textfile_dir.iterdir() if path.stat().st_uid != account.pw_uid] == []
    arguments = [str(textfile_dir), str(site.root / "fraisier.db"), str(site.root / "status"),
                 str(site.root / "fraises.yaml")]
    read = subprocess.run([*command, *arguments], capture_output=True, text=True, env=environment, cwd=root,
                          timeout=120)
    assert read.returncode == 0, read.stderr
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values[SUCCESS] == 1
    again = subprocess.run([*command, *arguments], capture_output=True, text=True, env=environment, cwd=root,
                           timeout=120)
    assert again.returncode == 0, again.stderr
    assert sample_values(textfile_dir / "fraisier.prom") == values
