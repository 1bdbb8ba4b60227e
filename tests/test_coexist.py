"""Installed beside the real Fraisier (0.84.2, from PyPI), in either order, in fresh virtual environments.

Two environments are built once for the module, each in two stages, and every command of interest is run at
each stage, so that "as with Fraisier alone" is compared with Fraisier alone, not with a memory of it:

- ``fraisier_first``: Fraisier alone, then this package installed after it (the documented order: our
  ``fraisier`` script, the dispatcher, wins);
- ``ours_first``: this package alone, then Fraisier installed after it (Fraisier's script wins).

Packages come from a wheelhouse filled once per run (``pip download``, served from pip's cache on repeats);
the environments install from it offline. Without PyPI the module skips, and under CI=true it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.processes import REPOSITORY, free_port, http_get, running

FRAISIER = "fraisier==0.84.2"
OUR_COMMANDS = ("exec", "install-dispatcher", "metrics", "record", "systemd", "textfile")
RECORD = ["record", "deployment", "--provider", "bare_metal", "--fraise-type", "api", "--status", "success",
          "--duration", "42"]
DEPLOYMENTS = 'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'
# Fraisier's commands as a user runs them: what each prints and its exit status must not change.
FRAISIER_PROBES = {
    "version": ["--version"],
    "providers": ["providers"],
    "provider-info": ["provider-info", "bare_metal"],
    "unknown command": ["no-such-command"],
    "ship --help": ["ship", "--help"],
    "metrics --help": ["metrics", "--help"],
    "bad option": ["--no-such-option"],
}

# Lines this package's CLI answers, whether `fraisier` or `fraisier-textfile` reads them: argv read as click
# reads it (`--` ends the group options; an option takes the next word as its value).
ARGV_PROBES = {
    "double dash": ["--", "record", "error", "--provider", "bare_metal", "--error-type", "timeout"],
    "value forgotten": ["--lock-timeout", "record", "error", "--provider", "bare_metal", "--error-type", "timeout"],
    "value missing": ["--textfile-dir"],
    "fraisier's command": ["list"],
}


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class VirtualEnvironment:
    root: Path
    environment: dict[str, str]
    stages: dict[str, dict[str, Outcome]] = field(default_factory=dict)

    def path(self, script: str) -> str:
        return str(self.root / "bin" / script)

    def run(self, script: str, *arguments: str, textfile_dir: Path | None = None) -> Outcome:
        environment = dict(self.environment)
        if textfile_dir is not None:
            environment["FRAISIER_TEXTFILE_DIR"] = str(textfile_dir)
        completed = subprocess.run([self.path(script), *arguments], capture_output=True, text=True,
                                   env=environment, timeout=120)
        return Outcome(completed.returncode, completed.stdout, completed.stderr)

    def probe(self, stage: str, only: Collection[str] | None = None) -> None:
        """Run the probes (only those named in ``only``: Fraisier's, and its ``help``) at ``stage``."""
        self.stages[stage] = {name: self.run("fraisier", *arguments) for name, arguments in FRAISIER_PROBES.items()
                              if only is None or name in only}
        self.stages[stage]["help"] = self.run("fraisier", "--help")
        if only is None and Path(self.path("fraisier-textfile")).exists():
            self.stages[stage]["ours --help"] = self.run("fraisier-textfile", "--help")
            for name, arguments in ARGV_PROBES.items():
                self.stages[stage][f"fraisier {name}"] = self.run("fraisier", *arguments)
                self.stages[stage][f"fraisier-textfile {name}"] = self.run("fraisier-textfile", *arguments)


def clean_environment() -> dict[str, str]:
    """This process's environment without what would reach into the venvs: with PYTHONPATH pointing at this
    checkout, say, a venv's Python would find our package there instead of in its site-packages."""
    return {
        key: value for key, value in os.environ.items()
        if not key.startswith(("FRAISIER_", "PYTHON", "VIRTUAL_ENV", "PROMETHEUS_"))
    }


def pip(*arguments: str) -> None:
    completed = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *arguments],
                               capture_output=True, text=True, timeout=600, env=clean_environment())
    if completed.returncode != 0:
        raise RuntimeError(f"pip {' '.join(arguments)} exited {completed.returncode}:\n{completed.stderr[-3000:]}")


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our wheel, built from this checkout, and Fraisier with both packages' dependencies."""
    root = tmp_path_factory.mktemp("wheelhouse")
    # Built from a copy: setuptools leaves build/ and an egg-info in the tree it builds.
    source = root / "source"
    shutil.copytree(REPOSITORY, source, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__", ".*_cache", "tests", "bench", ".venv"))
    pip("wheel", "-q", "--no-deps", "-w", str(root / "ours"), str(source))
    (our_wheel,) = (root / "ours").glob("*.whl")
    try:
        pip("download", "-q", "-d", str(root), FRAISIER, str(our_wheel))
    except RuntimeError as error:
        message = f"cannot download {FRAISIER} from PyPI: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return root


def build(root: Path, wheelhouse: Path, home: Path, order: tuple[str, str],
          only: Collection[str] | None = None) -> VirtualEnvironment:
    """A fresh virtual environment: the first distribution installed, probed, the second installed, probed (each
    Fraisier command a new process, seconds each: ``only`` the probes named, see VirtualEnvironment.probe)."""
    # No pip inside (the outer pip installs with --python): a venv made with ensurepip costs seconds more.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    environment = clean_environment()
    # One home for every environment, so that the defaults printed in help texts are the same everywhere.
    environment.update(HOME=str(home), XDG_STATE_HOME=str(home / "state"), COLUMNS="100", NO_COLOR="1",
                       PATH=f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    venv = VirtualEnvironment(root, environment)
    requirements = {"fraisier": FRAISIER, "ours": "fraisier-textfile"}
    for stage, distribution in zip(("alone", "both"), order):
        pip("--python", str(root / "bin" / "python"), "install", "-q", "--no-index", "--find-links", str(wheelhouse),
            requirements[distribution])
        venv.probe(stage, only)
    return venv


@pytest.fixture(scope="module")
def environments(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, VirtualEnvironment]:
    root = tmp_path_factory.mktemp("venvs")
    orders = {"fraisier_first": ("fraisier", "ours"), "ours_first": ("ours", "fraisier")}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(build, root / name, wheelhouse, root / "home", order)
                   for name, order in orders.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="module")
def fraisier_first(environments: dict[str, VirtualEnvironment]) -> VirtualEnvironment:
    return environments["fraisier_first"]


@pytest.fixture(scope="module")
def ours_first(environments: dict[str, VirtualEnvironment]) -> VirtualEnvironment:
    return environments["ours_first"]


def command_names(help_text: str) -> set[str]:
    """The command names in the Commands section of a click help text."""
    section = help_text.split("\nCommands:\n", 1)[1].split("\n\n", 1)[0]
    return {match.group(1) for match in re.finditer(r"^  (\S+)", section, re.MULTILINE)}


def samples(text: str) -> dict[str, float]:
    """Series key -> value of a text exposition."""
    pairs = (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: float(value) for key, value in pairs}


# Fraisier's CLI intact, in both orders


@pytest.mark.slow
@pytest.mark.parametrize("probe", FRAISIER_PROBES)
@pytest.mark.parametrize("order", ["fraisier_first", "ours_first"])
def test_fraisier_commands_behave_as_with_fraisier_alone(
    environments: dict[str, VirtualEnvironment], order: str, probe: str
) -> None:
    alone = environments["fraisier_first"].stages["alone"][probe]
    both = environments[order].stages["both"][probe]
    if probe == "metrics --help" and order == "fraisier_first":
        # The one command taken over: ours serves the textfile, with Fraisier's flags.
        assert "--port" in both.stdout and "-p" in both.stdout and "-a" in both.stdout
        assert "fraisier.prom" in both.stdout
        return
    assert both == alone


@pytest.mark.slow
def test_fraisier_installed_last_owns_the_fraisier_script(fraisier_first: VirtualEnvironment,
                                                          ours_first: VirtualEnvironment) -> None:
    assert ours_first.stages["both"]["help"] == fraisier_first.stages["alone"]["help"]
    assert "from fraisier.cli import main" in Path(ours_first.path("fraisier")).read_text()


@pytest.mark.slow
def test_fraisier_help_lists_both_command_sets(fraisier_first: VirtualEnvironment) -> None:
    fraisiers = command_names(fraisier_first.stages["alone"]["help"].stdout)
    assert {"ship", "deploy-daemon", "health", "db", "providers"} <= fraisiers
    combined = fraisier_first.stages["both"]["help"]
    assert combined.returncode == 0, combined.stderr
    assert command_names(combined.stdout) == fraisiers | set(OUR_COMMANDS)
    assert "--textfile-dir" in combined.stdout and "--config" in combined.stdout
    assert "fraisier-textfile --help" in combined.stdout


@pytest.mark.slow
def test_help_of_ours_alone_is_unchanged_by_fraisier(fraisier_first: VirtualEnvironment,
                                                     ours_first: VirtualEnvironment) -> None:
    expected = ours_first.stages["alone"]["ours --help"]
    assert expected.returncode == 0 and "Usage: fraisier-textfile" in expected.stdout
    assert fraisier_first.stages["both"]["ours --help"] == expected
    assert ours_first.stages["both"]["ours --help"] == expected


@pytest.mark.slow
def test_without_fraisier_fraisier_is_our_cli(ours_first: VirtualEnvironment) -> None:
    alone = ours_first.stages["alone"]
    assert alone["help"].returncode == 0
    assert alone["help"].stdout == alone["ours --help"].stdout.replace("fraisier-textfile", "fraisier")
    assert alone["unknown command"].returncode == 2
    assert "No such command 'no-such-command'" in alone["unknown command"].stderr


@pytest.mark.parametrize("probe", ["double dash", "value forgotten", "value missing"])
@pytest.mark.parametrize(("order", "stage"), [("ours_first", "alone"), ("fraisier_first", "both")],
                         ids=["without Fraisier", "with Fraisier"])
@pytest.mark.slow
def test_the_dispatcher_reads_argv_as_fraisier_textfile_does(
    environments: dict[str, VirtualEnvironment], order: str, stage: str, probe: str
) -> None:
    outcomes = environments[order].stages[stage]
    ours = outcomes[f"fraisier-textfile {probe}"]
    dispatched = outcomes[f"fraisier {probe}"]
    assert (dispatched.returncode, dispatched.stdout, dispatched.stderr) == (
        ours.returncode, ours.stdout.replace("fraisier-textfile", "fraisier"),
        ours.stderr.replace("fraisier-textfile", "fraisier"))
    if probe == "double dash":
        assert ours.returncode == 0, ours.stderr
    else:
        assert ours.returncode == 2 and ("--lock-timeout" in ours.stderr or "--textfile-dir" in ours.stderr)


@pytest.mark.slow
def test_without_fraisier_its_commands_are_named_as_fraisiers(ours_first: VirtualEnvironment) -> None:
    answer = ours_first.stages["alone"]["fraisier fraisier's command"]
    assert answer.returncode == 2
    assert "No such command 'list'. It is one of Fraisier's: pip install fraisier" in answer.stderr


# After an upgrade of Fraisier: its script wins again, and one command of ours puts the dispatcher back


@pytest.mark.slow
def test_after_fraisier_is_reinstalled_install_dispatcher_brings_both_command_sets_back(
    wheelhouse: Path, tmp_path: Path
) -> None:
    venv = build(tmp_path / "venv", wheelhouse, tmp_path / "home", ("fraisier", "ours"), only={"providers"})
    assert command_names(venv.stages["both"]["help"].stdout) >= set(OUR_COMMANDS)
    # What every upgrade of Fraisier does to its script (offline here: the same version, from the wheelhouse; its
    # dependencies left as they are, as an upgrade that needs none newer leaves them).
    pip("--python", venv.path("python"), "install", "-q", "--no-index", "--find-links", str(wheelhouse),
        "--force-reinstall", "--no-deps", FRAISIER)
    upgraded = venv.run("fraisier", "--help")
    assert command_names(upgraded.stdout) & set(OUR_COMMANDS) == {"metrics"}  # Fraisier's own metrics
    assert "from fraisier.cli import main" in Path(venv.path("fraisier")).read_text()
    # The recovery step: from what the user has, no index needed.
    recovered = venv.run("fraisier-textfile", "install-dispatcher")
    assert recovered.returncode == 0, recovered.stderr
    assert recovered.stdout == f"wrote {venv.path('fraisier')}: `fraisier` runs Fraisier's commands and " \
        "fraisier-textfile's\n"
    combined = venv.run("fraisier", "--help")
    assert command_names(combined.stdout) == command_names(upgraded.stdout) | set(OUR_COMMANDS)
    assert venv.run("fraisier", *RECORD, textfile_dir=tmp_path / "textfile").returncode == 0
    assert samples((tmp_path / "textfile" / "fraisier.prom").read_text())[DEPLOYMENTS] == 1
    assert venv.run("fraisier", "providers") == venv.stages["alone"]["providers"]
    # Run again, it replaces its own script the same way.
    assert venv.run("fraisier-textfile", "install-dispatcher").returncode == 0


# Our commands under their own name, in both orders


@pytest.mark.slow
@pytest.mark.parametrize("order", ["fraisier_first", "ours_first"])
def test_our_commands_under_their_own_name(environments: dict[str, VirtualEnvironment], order: str,
                                           tmp_path: Path) -> None:
    venv = environments[order]
    assert venv.run("fraisier-textfile", *RECORD, textfile_dir=tmp_path).returncode == 0
    module = venv.run("python", "-m", "fraisier_textfile", "textfile", "show", textfile_dir=tmp_path)
    assert module.returncode == 0, module.stderr
    assert "fraisier_deployments_total" in module.stdout
    assert samples((tmp_path / "fraisier.prom").read_text())[DEPLOYMENTS] == 1
    module_help = venv.run("python", "-m", "fraisier_textfile", "--help")
    assert module_help.returncode == 0
    assert set(OUR_COMMANDS) <= command_names(module_help.stdout)


# fraisier metrics serving the textfile, in the documented order (Fraisier first, ours after)


@pytest.mark.slow
def test_fraisier_metrics_serves_the_textfile_with_fraisiers_flags(fraisier_first: VirtualEnvironment,
                                                                   tmp_path: Path) -> None:
    recorded = fraisier_first.run("fraisier", "--textfile-dir", str(tmp_path), *RECORD)
    assert recorded.returncode == 0, recorded.stderr
    port = free_port()
    command = [fraisier_first.path("fraisier"), "--textfile-dir", str(tmp_path), "metrics",
               "-p", str(port), "-a", "127.0.0.1"]
    url = f"http://127.0.0.1:{port}/metrics"
    # `running` starts its command with this process's environment: env(1) gives it the venv's (and execs).
    with_environment = ["env", "-i", *(f"{key}={value}" for key, value in fraisier_first.environment.items())]
    with running([*with_environment, *command], url):
        scraped = http_get(url)
    assert samples(scraped)[DEPLOYMENTS] == 1


@pytest.mark.slow
def test_fraisier_record_imports_nothing_of_fraisier(fraisier_first: VirtualEnvironment, tmp_path: Path) -> None:
    traced = fraisier_first.run("python", "-X", "importtime", fraisier_first.path("fraisier"), *RECORD,
                                textfile_dir=tmp_path)
    assert traced.returncode == 0, traced.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in traced.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "fraisier_textfile.cli.record" in imported
    assert not {name for name in imported if name == "fraisier" or name.startswith("fraisier.")}
    assert not {name for name in imported if name.startswith("prometheus_client")}


# Fraisier's own metrics into the textfile


PROBE_SCRIPT = textwrap.dedent(
    """
    import http.server, sys, threading

    # Fraisier's own command first, through our dispatcher, exactly as `fraisier providers` runs.
    sys.argv = ["fraisier", "providers"]
    from fraisier_textfile.cli.dispatch import main
    try:
        main()
    except SystemExit as stop:
        assert not stop.code, stop.code

    # Then Fraisier's own code that records: its health-check manager against a real local HTTP server,
    # its recorder, and its DeploymentMetrics class used directly (as its restore strategy does).
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    from fraisier.health_check import HealthCheckManager, HTTPHealthChecker
    from fraisier.metrics import DeploymentMetrics, get_metrics_recorder

    checker = HTTPHealthChecker(f"http://127.0.0.1:{server.server_address[1]}/")
    result = HealthCheckManager(provider="bare_metal").check_and_record_metrics(checker, max_retries=1)
    assert result.success
    get_metrics_recorder().set_provider_availability("docker_compose", sys.argv[-1] == "up")
    DeploymentMetrics.rollbacks_total.labels(provider="bare_metal", reason="manual").inc()
    # A value our textfile refuses (an empty label) is Fraisier's to record, never an exception in its way.
    DeploymentMetrics.rollbacks_total.labels(provider="", reason="manual").inc()
    get_metrics_recorder().record_rollback("", "manual", 1.0)
    """
)

# What Fraisier's restore strategy and its database observability record, through its own module.
RESTORE_AND_DATABASE_SCRIPT = textwrap.dedent(
    """
    from fraisier_textfile.bridge import install

    assert install()
    from fraisier.db.observability import DatabaseObservability
    from fraisier.metrics import DeploymentMetrics

    for phase, seconds in {"download": 7.5, "total": 42.0}.items():
        DeploymentMetrics.restore_duration_seconds.labels(phase=phase).observe(seconds)
    database = DatabaseObservability("sqlite")
    database.log_query_success(database.log_query_start("select", "tb_deployment"))
    database.log_pool_metrics(active_connections=3, idle_connections=2, waiting_requests=0)
    """
)


@pytest.mark.slow
def test_fraisiers_metrics_through_the_dispatcher_land_in_the_textfile(fraisier_first: VirtualEnvironment,
                                                                         tmp_path: Path) -> None:
    textfile_dir = tmp_path / "textfile"
    script = tmp_path / "probe.py"
    script.write_text(PROBE_SCRIPT)
    for availability in ("up", "down"):  # two processes, one after the other: counters sum, the gauge is the last
        run = fraisier_first.run("python", str(script), availability, textfile_dir=textfile_dir)
        assert run.returncode == 0, run.stderr
        assert "bare_metal" in run.stdout  # `fraisier providers` printed its table
    merged = samples((textfile_dir / "fraisier.prom").read_text())
    assert merged['fraisier_health_checks_total{provider="bare_metal",check_type="http",status="pass"}'] == 2
    assert merged['fraisier_health_check_duration_seconds_count{provider="bare_metal",check_type="http"}'] == 2
    assert merged['fraisier_rollbacks_total{provider="bare_metal",reason="manual"}'] == 2
    assert merged['fraisier_provider_availability{provider="docker_compose"}'] == 0
    checked = fraisier_first.run("fraisier-textfile", "textfile", "check", textfile_dir=textfile_dir)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.slow
def test_fraisiers_restore_and_database_metrics_land_in_the_textfile(fraisier_first: VirtualEnvironment,
                                                                     tmp_path: Path) -> None:
    script = tmp_path / "restore.py"
    script.write_text(RESTORE_AND_DATABASE_SCRIPT)
    for _ in range(2):
        run = fraisier_first.run("python", str(script), textfile_dir=tmp_path / "textfile")
        assert run.returncode == 0, run.stderr
    merged = samples((tmp_path / "textfile" / "fraisier.prom").read_text())
    assert merged['fraisier_restore_duration_seconds_count{phase="total"}'] == 2
    assert merged['fraisier_restore_duration_seconds_sum{phase="download"}'] == 15
    # Raw observations re-bucketed by our bounds, not Fraisier's bucket counts copied: 7.5 is under 10.
    assert merged['fraisier_restore_duration_seconds_bucket{phase="download",le="10.0"}'] == 2
    assert merged['fraisier_db_queries_total{database_type="sqlite",operation="select",status="success"}'] == 2
    assert merged['fraisier_active_db_connections{database_type="sqlite"}'] == 3


@pytest.mark.slow
def test_bridge_runs_fraisiers_console_scripts(fraisier_first: VirtualEnvironment, tmp_path: Path) -> None:
    bridged = fraisier_first.run("python", "-m", "fraisier_textfile.bridge", "fraisier", "providers",
                                 textfile_dir=tmp_path)
    assert bridged == fraisier_first.stages["alone"]["providers"]



# Where the dispatcher sends a command line (decided from argv alone, before any import)


@pytest.mark.parametrize(
    ("arguments", "destination", "passed_on", "environment"),
    [
        (RECORD, "ours", RECORD, {}),
        (["--textfile-dir", "/d", "exec", "--provider", "p", "--", "ship"], "ours",
         ["exec", "--provider", "p", "--", "ship"], {"FRAISIER_TEXTFILE_DIR": "/d"}),
        (["--lock-timeout=3", "metrics", "-p", "8001"], "ours", ["metrics", "-p", "8001"],
         {"FRAISIER_LOCK_TIMEOUT": "3"}),
        (["textfile", "--help"], "ours", ["textfile", "--help"], {}),
        ([], "help", [], {}),
        (["--help"], "help", ["--help"], {}),
        (["-h"], "help", ["-h"], {}),
        (["--textfile-dir", "/d"], "help", [], {"FRAISIER_TEXTFILE_DIR": "/d"}),
        (["-v", "--help"], "help", ["-v", "--help"], {}),
        (["--version"], "fraisier", ["--version"], {}),
        (["ship", "--json"], "fraisier", ["ship", "--json"], {}),
        (["-c", "metrics", "list"], "fraisier", ["-c", "metrics", "list"], {}),
        (["-v", "metrics"], "ours", ["-v", "metrics"], {}),
        (["--textfile-dir=/d", "health"], "fraisier", ["health"], {"FRAISIER_TEXTFILE_DIR": "/d"}),
        (["no-such-command"], "fraisier", ["no-such-command"], {}),
        (["--", *RECORD], "ours", ["--", *RECORD], {}),
        (["--", "list"], "fraisier", ["--", "list"], {}),
        (["--lock-timeout", "record", "error"], "ours", ["error"], {"FRAISIER_LOCK_TIMEOUT": "record"}),
        (["--textfile-dir"], "ours", [], {}),
        (["--json", "textfile", "summary"], "ours", ["--json", "textfile", "summary"], {}),
        (["-c", "/etc/fraises.yaml", "metrics"], "ours", ["-c", "/etc/fraises.yaml", "metrics"], {}),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_route(arguments: list[str], destination: str, passed_on: list[str], environment: dict[str, str]) -> None:
    from fraisier_textfile.cli.dispatch import route

    decided = route(arguments)
    assert (decided.destination, decided.fraisier_arguments, decided.environment) == (
        destination, passed_on, environment)


def test_the_dispatcher_knows_every_command_of_ours() -> None:
    """The dispatcher decides before importing the CLI, so it keeps its own list: a new top-level command
    must be added to it, or `fraisier NEW` would go to Fraisier."""
    from fraisier_textfile.cli.dispatch import OUR_COMMANDS as DISPATCHED
    from fraisier_textfile.cli.group import main

    assert set(main.commands) == DISPATCHED
    assert set(OUR_COMMANDS) == DISPATCHED


def test_the_dispatcher_knows_every_group_option_of_ours() -> None:
    """Likewise for the options before the command: one it does not know would send the line to Fraisier."""
    import click

    from fraisier_textfile.cli.dispatch import OUR_GROUP_OPTIONS
    from fraisier_textfile.cli.group import main

    options = {name for parameter in main.params if isinstance(parameter, click.Option)
               for name in parameter.opts if name != "--version"}
    assert options <= set(OUR_GROUP_OPTIONS)
    for parameter in main.params:
        if isinstance(parameter, click.Option) and parameter.envvar:
            assert {OUR_GROUP_OPTIONS[name] for name in parameter.opts} == {parameter.envvar}
