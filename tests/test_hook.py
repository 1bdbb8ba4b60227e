"""The start-up hook: what Fraisier records in any of its processes reaches the textfile, with no step by anyone.

Two tiers. The first runs in this interpreter, where Fraisier 0.84.2 is installed: each test starts a Python
whose first act is ``site.addsitedir`` of a directory holding the hook's .pth (the very processing ``site`` does
at start-up for site-packages), then runs Fraisier's own code. The second (slow) builds this package as a wheel
and installs it, with Fraisier's wheel from PyPI, into fresh virtual environments in both orders and after a
forced reinstall of Fraisier over ours, and runs Fraisier's own console scripts there: ``fraisier`` and a real
``fraisier-webhook`` on a free loopback port. Their dependencies come from this interpreter's site-packages
through a path line in a .pth file (no download, and the .pth files there are not run).

Fraisier 0.84.2 records in three places only: ``HealthCheckManager.check_and_record_metrics``,
``DatabaseObservability`` and the restore strategy's ``DeploymentMetrics.restore_duration_seconds``. None of its
CLI commands or webhook routes reaches them (a provider's ``check_health`` goes through
``async_check_with_retries``, which records nothing; the restore needs PostgreSQL), so the probes call them,
and a provider's ``check_health``, as a program embedding Fraisier does, inside the process Fraisier's own
script started.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.processes import REPOSITORY, free_port, http_get, stop
from tests.values import samples_in as samples

FRAISIER = "fraisier==0.84.2"
HOOK_PTH = "fraisier_textfile_hook.pth"
HOOK_MODULE = "_fraisier_textfile_hook"
HEALTH_CHECKS = 'fraisier_health_checks_total{provider="bare_metal",check_type="http",status="pass"}'
DB_QUERIES = 'fraisier_db_queries_total{database_type="sqlite",operation="select",status="success"}'
POOL = 'fraisier_active_db_connections{database_type="sqlite"}'
RESTORES = 'fraisier_restore_duration_seconds_count{phase="total"}'
DEADLINE = 120.0
"""Seconds a poll of the textfile waits before it fails (a loaded machine; never a timing claim)."""


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without what would reach into the Python under test (PYTHONPATH, a textfile
    directory, the hook's own switch)."""
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("FRAISIER_", "PYTHON", "VIRTUAL_ENV", "PROMETHEUS_"))}
    environment.update(extra)
    return environment


# What Fraisier records, called as a program embedding Fraisier calls it: nothing of fraisier_textfile is named.
RECORDINGS = textwrap.dedent(
    """
    import http.server, json, sys, threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    server.RequestHandlerClass.log_message = lambda *arguments: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    from fraisier.health_check import HealthCheckManager, HTTPHealthChecker

    checker = HTTPHealthChecker(f"http://127.0.0.1:{server.server_address[1]}/")
    assert HealthCheckManager(provider="bare_metal").check_and_record_metrics(checker, max_retries=1).success
    from fraisier.db.observability import DatabaseObservability

    database = DatabaseObservability("sqlite")
    database.log_query_success(database.log_query_start("select", "tb_deployment"))
    database.log_pool_metrics(active_connections=3, idle_connections=2, waiting_requests=0)
    from fraisier.metrics import DeploymentMetrics

    DeploymentMetrics.restore_duration_seconds.labels(phase="total").observe(42.0)
    # A provider's check_health runs too (it records nothing in 0.84.2: async_check_with_retries does not).
    import asyncio
    from fraisier.providers.bare_metal import BareMetalProvider
    from fraisier.providers.base import HealthCheck

    check = HealthCheck(url=f"http://127.0.0.1:{server.server_address[1]}/", retries=1, retry_delay=0, timeout=5)
    assert asyncio.run(BareMetalProvider({"host": "127.0.0.1"}).check_health(check))
    from prometheus_client import REGISTRY

    print(json.dumps({
        "bridged": "fraisier_textfile.bridge" in sys.modules,
        "fraisier_registry": REGISTRY.get_sample_value(
            "fraisier_health_checks_total", {"provider": "bare_metal", "check_type": "http", "status": "pass"}),
    }))
    """
)


def with_site(directory: Path, script: str) -> str:
    """``script`` run after ``site`` processed the .pth files of ``directory``, as it does at start-up."""
    return f"import site, sys\nsys.path.insert(0, {str(directory)!r})\nsite.addsitedir({str(directory)!r})\n{script}"


def hook_directory(tmp_path: Path) -> Path:
    """A site directory holding the hook's .pth and module, as a wheel installs them."""
    directory = tmp_path / "site"
    directory.mkdir()
    shutil.copy2(REPOSITORY / HOOK_PTH, directory / HOOK_PTH)
    shutil.copy2(REPOSITORY / f"{HOOK_MODULE}.py", directory / f"{HOOK_MODULE}.py")
    return directory


def run_python(script: str, textfile_dir: Path, **environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=textfile_dir.parent, env=clean_environment(
                              PYTHONPATH=str(REPOSITORY), FRAISIER_TEXTFILE_DIR=str(textfile_dir), **environment))


def fraisier_installed_here() -> None:
    try:
        import fraisier.metrics  # noqa: F401
    except ImportError:
        message = f"{FRAISIER} is not installed in this interpreter (.ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


# In this interpreter


def test_fraisiers_own_recordings_reach_the_textfile_through_the_hook(tmp_path: Path) -> None:
    fraisier_installed_here()
    directory, textfile_dir = hook_directory(tmp_path), tmp_path / "textfile"
    for _ in range(2):  # two processes: the counters sum, as with any writer
        run = run_python(with_site(directory, RECORDINGS), textfile_dir)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout.splitlines()[-1]) == {"bridged": True, "fraisier_registry": None}
    merged = samples(textfile_dir / "fraisier.prom")
    assert merged[HEALTH_CHECKS] == 2
    assert merged[DB_QUERIES] == 2
    assert merged[POOL] == 3
    assert merged[RESTORES] == 2


@pytest.mark.parametrize("value", ["0", "false", "No", "off"])
def test_the_hook_is_turned_off_by_its_environment_variable(tmp_path: Path, value: str) -> None:
    fraisier_installed_here()
    directory, textfile_dir = hook_directory(tmp_path), tmp_path / "textfile"
    run = run_python(with_site(directory, RECORDINGS), textfile_dir, FRAISIER_TEXTFILE_HOOK=value)
    assert run.returncode == 0, run.stderr
    # Fraisier's own recorder, as without this package: its in-memory registry, no textfile.
    assert json.loads(run.stdout.splitlines()[-1]) == {"bridged": False, "fraisier_registry": 1.0}
    assert not (textfile_dir / "fraisier.prom").exists()


def test_the_hook_imports_nothing_at_start_up(tmp_path: Path) -> None:
    """At start, the hook's module is the one module it adds: not our package, not Fraisier, not even typing."""
    directory, empty = hook_directory(tmp_path), tmp_path / "empty"
    empty.mkdir()
    loaded = {}
    for name, where in {"with": directory, "without": empty}.items():
        run = run_python(with_site(where, "print(type(sys.meta_path[0]).__name__, *sorted(sys.modules))"),
                         tmp_path / "textfile")
        assert run.returncode == 0 and run.stderr == ""
        first_finder, *modules = run.stdout.split()
        loaded[name] = (first_finder, set(modules))
    assert loaded["with"][0] == "FraisierMetricsFinder" != loaded["without"][0]
    assert loaded["with"][1] - loaded["without"][1] == {HOOK_MODULE}


def test_fraisiers_module_keeps_its_own_loader(tmp_path: Path) -> None:
    """Only the instance's exec_module was shadowed, and only until the module ran: inspect and importlib see
    Fraisier's module and its loader as without the hook."""
    fraisier_installed_here()
    script = with_site(hook_directory(tmp_path), textwrap.dedent(
        """
        import importlib, importlib.machinery, inspect
        import fraisier.metrics as metrics

        loader = metrics.__spec__.loader
        assert type(loader) is importlib.machinery.SourceFileLoader, type(loader)
        assert "exec_module" not in vars(loader)
        assert metrics.__loader__ is loader
        assert "class MetricsRecorder" in inspect.getsource(metrics)
        assert metrics.get_metrics_recorder.__module__.startswith("fraisier_textfile")
        print("ok")
        """
    ))
    run = run_python(script, tmp_path / "textfile")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "ok\n"


@pytest.mark.parametrize(
    "hook_module",
    [
        pytest.param(None, id="missing"),
        pytest.param("def broken(:\n", id="syntax error"),
        pytest.param("raise RuntimeError('hook')\n", id="raising"),
    ],
)
def test_a_broken_hook_never_breaks_the_interpreter(tmp_path: Path, hook_module: str | None) -> None:
    directory = tmp_path / "site"
    directory.mkdir()
    shutil.copy2(REPOSITORY / HOOK_PTH, directory / HOOK_PTH)
    if hook_module is not None:
        (directory / f"{HOOK_MODULE}.py").write_text(hook_module)
    script = with_site(directory, "import json\nprint('fine')")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env=clean_environment())
    assert (run.returncode, run.stdout, run.stderr) == (0, "fine\n", "")


def test_a_failing_bridge_leaves_fraisier_its_own_metrics_and_says_so_once(tmp_path: Path) -> None:
    fraisier_installed_here()
    directory = hook_directory(tmp_path)
    package = directory / "fraisier_textfile"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('a broken installation')\n")
    script = with_site(directory, textwrap.dedent(
        """
        import fraisier.metrics, fraisier.health_check
        from fraisier.metrics import get_metrics_recorder

        recorder = get_metrics_recorder()
        recorder.record_health_check("bare_metal", "http", "pass", 0.1)
        print(type(recorder).__module__)
        """
    ))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env=clean_environment())
    assert run.returncode == 0, run.stderr
    assert run.stdout == "fraisier.metrics\n"
    [line] = run.stderr.splitlines()
    assert "Fraisier's metrics of this process stay in its memory" in line
    assert "a broken installation" in line and "FRAISIER_TEXTFILE_HOOK=0" in line


def test_without_the_package_the_hook_is_silent(tmp_path: Path) -> None:
    """The package removed by hand and the hook's files left behind: Fraisier runs as without either."""
    fraisier_installed_here()
    directory = hook_directory(tmp_path)
    script = with_site(directory, "import sys\nsys.modules['fraisier_textfile'] = None\nimport fraisier.metrics\n"
                                  "print(type(fraisier.metrics.get_metrics_recorder()).__module__)")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env=clean_environment())
    assert (run.returncode, run.stdout, run.stderr) == (0, "fraisier.metrics\n", "")


# Fresh virtual environments: the wheel as users install it, beside Fraisier's own


@dataclass(frozen=True)
class VirtualEnvironment:
    root: Path
    environment: dict[str, str]

    def path(self, script: str) -> str:
        return str(self.root / "bin" / script)

    @property
    def purelib(self) -> Path:
        [directory] = (self.root / "lib").glob("python*/site-packages")
        return directory

    def run(self, *arguments: str, textfile_dir: Path, **environment: str) -> subprocess.CompletedProcess[str]:
        env = {**self.environment, "FRAISIER_TEXTFILE_DIR": str(textfile_dir), **environment}
        return subprocess.run([self.path("python"), *arguments], capture_output=True, text=True, env=env,
                              timeout=300, cwd=textfile_dir.parent)


def pip(*arguments: str) -> None:
    completed = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *arguments],
                               capture_output=True, text=True, timeout=600, env=clean_environment())
    if completed.returncode != 0:
        raise RuntimeError(f"pip {' '.join(arguments)} exited {completed.returncode}:\n{completed.stderr[-3000:]}")


@dataclass(frozen=True)
class Wheels:
    ours: Path
    fraisier: Path
    directory: Path


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Wheels:
    root = tmp_path_factory.mktemp("wheels")
    source = root / "source"
    shutil.copytree(REPOSITORY, source, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__", ".*_cache", "tests", "bench"))
    try:  # without build isolation first (no index needed); else pip brings setuptools into an isolated build
        pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(root), str(source))
    except RuntimeError:
        pip("wheel", "-q", "--no-deps", "-w", str(root), str(source))
    try:
        pip("download", "-q", "--no-deps", "-d", str(root), FRAISIER)
    except RuntimeError as error:
        message = f"cannot download {FRAISIER} from PyPI: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    [ours] = root.glob("fraisier_textfile-*.whl")
    [fraisier] = root.glob("fraisier-*.whl")
    return Wheels(ours, fraisier, root)


def virtual_environment(root: Path, home: Path) -> VirtualEnvironment:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    environment = clean_environment(HOME=str(home), PATH=f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    venv = VirtualEnvironment(root, environment)
    dependencies = [path for path in site.getsitepackages() if Path(path).is_dir()]
    (venv.purelib / "_dependencies.pth").write_text("".join(f"{path}\n" for path in dependencies))
    return venv


def install(venv: VirtualEnvironment, wheel: Path, *options: str) -> None:
    # --ignore-installed: the venv sees this interpreter's site-packages (the path line), where Fraisier and an
    # editable install of this package stand; pip must install into the venv all the same.
    pip("--python", venv.path("python"), "install", "-q", "--no-deps", "--no-index", *options, str(wheel))


STATES = {
    "fraisier_first": ("fraisier", "ours"),
    "ours_first": ("ours", "fraisier"),
    "fraisier_reinstalled_over_ours": ("fraisier", "ours", "fraisier again"),
}


@pytest.fixture(scope="module")
def environments(wheels: Wheels, tmp_path_factory: pytest.TempPathFactory) -> dict[str, VirtualEnvironment]:
    root = tmp_path_factory.mktemp("venvs")
    built = {}
    for state, steps in STATES.items():
        venv = virtual_environment(root / state, root / "home")
        for step in steps:
            if step == "fraisier again":  # what an upgrade of Fraisier does to the files both declare
                pip("--python", venv.path("python"), "install", "-q", "--no-deps", "--no-index", "--find-links",
                    str(wheels.directory), "--force-reinstall", FRAISIER)
            else:
                install(venv, wheels.fraisier if step == "fraisier" else wheels.ours, "--ignore-installed")
        built[state] = venv
    return built


@pytest.mark.slow
@pytest.mark.parametrize("state", STATES)
def test_the_states_are_what_they_claim(environments: dict[str, VirtualEnvironment], state: str) -> None:
    venv = environments[state]
    script = Path(venv.path("fraisier")).read_text()
    owner = "ours" if "fraisier_textfile" in script else "fraisier"
    assert owner == ("ours" if state == "fraisier_first" else "fraisier")
    assert (venv.purelib / HOOK_PTH).is_file() and (venv.purelib / f"{HOOK_MODULE}.py").is_file()


EMBEDDING = textwrap.dedent(
    """
    import runpy, sys

    # Fraisier's own `fraisier` script (ours in the one order where ours was installed last), run in this
    # process as its console script runs, then the code of Fraisier's that records.
    script = sys.argv[1]
    sys.argv = [script, "providers"]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        assert not stop.code, stop.code
    """
) + RECORDINGS


@pytest.mark.slow
@pytest.mark.parametrize("state", STATES)
def test_fraisiers_recordings_reach_the_textfile_in_every_install_order(
    environments: dict[str, VirtualEnvironment], state: str, tmp_path: Path
) -> None:
    venv, textfile_dir = environments[state], tmp_path / "textfile"
    probe = tmp_path / "probe.py"
    probe.write_text(EMBEDDING)
    for _ in range(2):
        run = venv.run(str(probe), venv.path("fraisier"), textfile_dir=textfile_dir)
        assert run.returncode == 0, run.stderr
        assert "bare_metal" in run.stdout  # `fraisier providers` printed its table
        assert json.loads(run.stdout.splitlines()[-1]) == {"bridged": True, "fraisier_registry": None}
    merged = samples(textfile_dir / "fraisier.prom")
    assert (merged[HEALTH_CHECKS], merged[DB_QUERIES], merged[POOL], merged[RESTORES]) == (2, 2, 3, 2)


@pytest.mark.slow
@pytest.mark.parametrize("state", STATES)
def test_the_hook_costs_no_import_at_start_and_prints_nothing(
    environments: dict[str, VirtualEnvironment], state: str, tmp_path: Path
) -> None:
    venv = environments[state]
    traced = venv.run("-X", "importtime", "-c", "pass", textfile_dir=tmp_path / "textfile")
    assert traced.returncode == 0 and traced.stdout == ""
    imported = {line.rsplit("|", 1)[1].strip() for line in traced.stderr.splitlines()
                if line.startswith("import time:")}
    assert HOOK_MODULE in imported
    assert not {name for name in imported if name.startswith(("fraisier", "prometheus_client", "logging"))}
    assert not {"typing", "__future__", "importlib.util", "importlib.machinery"} & imported
    fraisiers_own = venv.run(venv.path("fraisier"), "--version", textfile_dir=tmp_path / "textfile")
    assert fraisiers_own.returncode == 0 and fraisiers_own.stderr == ""


WEBHOOK = textwrap.dedent(
    """
    import runpy, sys, threading, time, urllib.request

    script, port = sys.argv[1], sys.argv[2]
    url = f"http://127.0.0.1:{port}/health"

    def record_inside_the_server():
        # Once it serves: a health check of the webhook itself, and a query observed, by Fraisier's own code.
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                time.sleep(0.1)
        from fraisier.health_check import HealthCheckManager, HTTPHealthChecker
        from fraisier.db.observability import DatabaseObservability

        assert HealthCheckManager(provider="bare_metal").check_and_record_metrics(
            HTTPHealthChecker(url), max_retries=1).success
        database = DatabaseObservability("sqlite")
        database.log_query_success(database.log_query_start("select", "tb_webhook_event"))

    threading.Thread(target=record_inside_the_server, daemon=True).start()
    sys.argv = [script]
    runpy.run_path(script, run_name="__main__")  # Fraisier's own fraisier-webhook: uvicorn, until stopped
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("state", STATES)
def test_a_running_fraisier_webhook_writes_what_it_records_while_it_runs(
    environments: dict[str, VirtualEnvironment], state: str, tmp_path: Path
) -> None:
    venv, textfile_dir = environments[state], tmp_path / "textfile"
    probe = tmp_path / "webhook.py"
    probe.write_text(WEBHOOK)
    port = free_port()
    environment = {**venv.environment, "FRAISIER_TEXTFILE_DIR": str(textfile_dir), "FRAISIER_HOST": "127.0.0.1",
                   "FRAISIER_PORT": str(port)}
    with open(tmp_path / "webhook.log", "w+b") as log:
        server = subprocess.Popen([venv.path("python"), str(probe), venv.path("fraisier-webhook"), str(port)],
                                  stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=tmp_path)
        try:
            deadline = time.monotonic() + DEADLINE
            while samples(textfile_dir / "fraisier.prom").get(DB_QUERIES) != 1:
                log.seek(0)
                assert server.poll() is None, f"fraisier-webhook exited:\n{log.read().decode()[-3000:]}"
                assert time.monotonic() < deadline, f"nothing reached the textfile:\n{log.read().decode()[-3000:]}"
                time.sleep(0.1)
            # Written while the server runs and serves, not at its exit.
            assert server.poll() is None
            assert json.loads(http_get(f"http://127.0.0.1:{port}/health"))["service"] == "fraisier-webhook"
        finally:
            stop(server)
    assert samples(textfile_dir / "fraisier.prom")[HEALTH_CHECKS] == 1


@pytest.mark.slow
def test_pip_uninstall_removes_the_hook_and_fraisier_runs_as_alone(wheels: Wheels, tmp_path: Path) -> None:
    venv = virtual_environment(tmp_path / "venv", tmp_path / "home")
    install(venv, wheels.fraisier, "--ignore-installed")
    install(venv, wheels.ours, "--ignore-installed")
    assert (venv.purelib / HOOK_PTH).is_file()
    pip("--python", venv.path("python"), "uninstall", "-q", "-y", "fraisier-textfile")
    assert not (venv.purelib / HOOK_PTH).exists() and not (venv.purelib / f"{HOOK_MODULE}.py").exists()
    probe = tmp_path / "probe.py"
    probe.write_text(RECORDINGS)
    # This interpreter's site-packages (the path line) holds an editable fraisier_textfile without its hook:
    # Fraisier's processes here are Fraisier's alone.
    run = venv.run(str(probe), textfile_dir=tmp_path / "textfile")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1]) == {"bridged": False, "fraisier_registry": 1.0}
    assert not (tmp_path / "textfile").exists()


def test_a_fraisier_without_the_families_class_is_still_pointed_at_the_textfile(tmp_path: Path) -> None:
    """A later Fraisier may drop or rename DeploymentMetrics: its recorder still records into the textfile, and
    no process logs a warning for it."""
    script = with_site(hook_directory(tmp_path), textwrap.dedent(
        f"""
        import logging, pathlib, sys
        package = pathlib.Path({str(tmp_path / "fake")!r}) / "fraisier"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "metrics.py").write_text("def get_metrics_recorder():\\n    return None\\n")
        sys.path.insert(0, str(package.parent))
        logging.basicConfig(level=logging.DEBUG)
        from fraisier.metrics import get_metrics_recorder

        get_metrics_recorder().record_deployment_complete("bare_metal", "api", "success", 1.0)
        print(type(get_metrics_recorder()).__module__)
        """
    ))
    run = run_python(script, tmp_path / "textfile")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "fraisier_textfile.recorder.recorder\n"
    assert "hook failed" not in run.stderr
    deployments = 'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'
    assert samples(tmp_path / "textfile" / "fraisier.prom")[deployments] == 1


def test_threads_importing_fraisiers_metrics_at_once_all_get_it_pointed_at_the_textfile(tmp_path: Path) -> None:
    fraisier_installed_here()
    script = with_site(hook_directory(tmp_path), textwrap.dedent(
        """
        import importlib, threading

        barrier = threading.Barrier(8)
        seen = []

        def load():
            barrier.wait()
            seen.append(importlib.import_module("fraisier.metrics").get_metrics_recorder.__module__)

        threads = [threading.Thread(target=load) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print(sorted(set(seen)), len(seen))
        """
    ))
    run = run_python(script, tmp_path / "textfile")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "['fraisier_textfile.recorder.recorder'] 8\n"
    assert run.stderr == ""


def wheel_files(wheel: Path) -> set[str]:
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [record] = [name for name in names if name.endswith(".dist-info/RECORD")]
        recorded = {line.split(",", 1)[0] for line in archive.read(record).decode().splitlines()}
    assert names == recorded  # pip uninstall removes what the RECORD lists
    return names


@pytest.mark.slow
def test_the_sdist_builds_a_wheel_with_the_hook(tmp_path: Path) -> None:
    """What PyPI users without a wheel for their platform get: the sdist carries the build step and the hook."""
    source = tmp_path / "source"
    shutil.copytree(REPOSITORY, source, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__", ".*_cache", "tests", "bench"))
    built = subprocess.run([sys.executable, "-c", "from setuptools import build_meta; "
                            f"print(build_meta.build_sdist({str(tmp_path / 'sdist')!r}))"],
                           cwd=source, capture_output=True, text=True, timeout=300, env=clean_environment())
    assert built.returncode == 0, built.stderr
    unpacked = tmp_path / "unpacked"
    shutil.unpack_archive(tmp_path / "sdist" / built.stdout.split()[-1], unpacked)
    [tree] = unpacked.iterdir()
    pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(tree))
    [wheel] = (tmp_path / "wheel").glob("*.whl")
    assert {HOOK_PTH, f"{HOOK_MODULE}.py"} <= wheel_files(wheel)
    assert "build_with_hook.py" not in wheel_files(wheel)


@pytest.mark.slow
def test_an_isolated_build_without_wheel_in_the_interpreter_ships_the_hook(tmp_path: Path) -> None:
    """pip's build isolation from an interpreter that has pip but no `wheel`: the setuptools it brings builds
    the wheel itself, with the hook at the root."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    assert subprocess.run([str(venv / "bin" / "python"), "-c", "import wheel"], capture_output=True).returncode != 0
    source = tmp_path / "source"
    shutil.copytree(REPOSITORY, source, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__", ".*_cache", "tests", "bench"))
    built = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                            str(tmp_path / "wheel"), str(source)], capture_output=True, text=True, timeout=600,
                           env=clean_environment())
    if built.returncode != 0 and "Could not find a version" in built.stderr:
        message = f"pip cannot reach the index for setuptools: {built.stderr[-500:]}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "wheel").glob("*.whl")
    assert {HOOK_PTH, f"{HOOK_MODULE}.py"} <= wheel_files(wheel)
