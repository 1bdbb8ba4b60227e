"""The release (0.2.0) and this version on one textfile directory at once, as an operator's upgrade leaves them.

After ``pip install -U fraisier-textfile`` a long-running ``fraisier metrics`` and a deploy daemon keep the old
version for minutes or days, while new ``fraisier record`` and cron processes run the new one; some hosts go back
(a downgrade). Both versions' processes race here on one directory and are SIGKILLed at random moments: whichever
version merges, every event is counted once, nothing is lost, the file stays one node_exporter and promtool read,
and neither version wedges the other; and a process of this version whose installation `pip` replaces under it
(by 0.2.0's: a downgrade) records on. 0.2.0 is built from this repository's history (its commit), and this checkout
as a wheel, once per session.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from fraisier_textfile import TextfileStore
from fraisier_textfile.changes import Changes
from fraisier_textfile.format.schema import Family, Kind, Schema
from fraisier_textfile.store.handovers import SET_ASIDE_FAMILY
from fraisier_textfile.store.textfile import TextfileStore as StoreOfASchema

from .installs import Installation, build_revision, build_wheel, clean_environment, install, reinstall
from .processes import binary, free_port, http_get, lock_held_elsewhere, node_exporter, running
from .test_fraisier_state import (
    ACTIVE,
    API_FAILED,
    API_ROLLED_BACK,
    API_SUCCESS,
    Fraisier,
    backup_of,
    deployments,
    errors,
)
from .values import canonical_samples, sample_values

RELEASE = "87d4bd1"
"""0.2.0, the released version ("Identity: version 0.2.0")."""
WORKERS = Path(__file__).with_name("workers.py")


@dataclass(frozen=True)
class Version:
    """One version of the package, as its processes are started: its Python, its CLI, its environment."""

    name: str
    python: str
    cli: tuple[str, ...]
    environment: dict[str, str]

    def run(self, *arguments: str, directory: Path) -> subprocess.CompletedProcess[str]:
        # Never from the checkout: `python -m` and a script's directory put the working directory first on the path.
        return subprocess.run([*self.cli, "--textfile-dir", str(directory), *arguments], capture_output=True,
                              text=True, env=self.environment, cwd=directory.parent, timeout=120)

    def refresh(self, directory: Path) -> None:
        refreshed = self.run("textfile", "refresh", directory=directory)
        assert refreshed.returncode == 0, f"{self.name}: {refreshed.stderr}"

    def worker(self, function: str, directory: Path, *arguments: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([self.python, str(WORKERS), function, str(directory), *arguments],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=self.environment,
                                cwd=directory.parent, start_new_session=True)

    @contextmanager
    def server(self, directory: Path) -> Iterator[str]:
        """Its ``fraisier metrics`` serving ``directory``; yields the /metrics URL."""
        port = free_port()
        url = f"http://127.0.0.1:{port}/metrics"
        command = [*self.cli, "--textfile-dir", str(directory), "metrics", "--address", "127.0.0.1",
                   "--port", str(port)]
        with running(command, url, env=self.environment, cwd=directory.parent):
            yield url


RELEASE_WHEEL = Path(__file__).parent / "releases" / "fraisier_textfile-0.2.0-py3-none-any.whl"
"""0.2.0's wheel, built from RELEASE's tree as build_wheel builds this checkout, and kept here: CI clones main
without its history maybe (a shallow clone has no RELEASE), and the upgrade tests must run there all the same.
test_the_kept_release_wheel_is_the_release_built_from_its_commit checks it against RELEASE where the history is."""


@pytest.fixture(scope="session")
def release_wheel() -> Path:
    return RELEASE_WHEEL


def test_the_kept_release_wheel_is_the_release_built_from_its_commit(tmp_path: Path) -> None:
    """Every file the kept wheel installs is, byte for byte, RELEASE's (its metadata aside: a build stamps it)."""
    present = subprocess.run(["git", "-C", str(Path(__file__).parent), "cat-file", "-e", f"{RELEASE}^{{commit}}"],
                             capture_output=True, timeout=60)
    if present.returncode != 0:
        pytest.skip(f"{RELEASE} is not in this clone (a shallow one): nothing to check the kept wheel against")
    built = build_revision(RELEASE, tmp_path)

    def installed_files(wheel: Path) -> dict[str, bytes]:
        with zipfile.ZipFile(wheel) as archive:
            return {name: archive.read(name) for name in archive.namelist() if ".dist-info/" not in name}

    kept = installed_files(RELEASE_WHEEL)
    assert kept and kept == installed_files(built)


@pytest.fixture(scope="session")
def release_installation(tmp_path_factory: pytest.TempPathFactory, release_wheel: Path) -> Installation:
    installation = install(release_wheel, tmp_path_factory.mktemp("release-venv") / "venv")
    said = subprocess.run([installation.script("fraisier-textfile"), "--version"], capture_output=True, text=True,
                          env=clean_environment(), cwd=installation.root, timeout=120)
    assert said.stdout.strip() == "fraisier-textfile, version 0.2.0", said
    return installation


@pytest.fixture(scope="session")
def current_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("current"))


@pytest.fixture
def release(release_installation: Installation) -> Version:
    """0.2.0, its processes in this test's environment: without this checkout on their path, and with this test's
    settings (no Fraisier database of the machine read, the test's default directory)."""
    settings = {name: value for name, value in os.environ.items()
                if name.startswith("FRAISIER_") or name == "XDG_STATE_HOME"}
    return Version("old", str(release_installation.python), (str(release_installation.script("fraisier-textfile")),),
                   clean_environment(**settings))


@pytest.fixture
def current() -> Version:
    return Version("new", sys.executable, (sys.executable, "-m", "fraisier_textfile"), dict(os.environ))


# The race


KINDS = ("errors", "deployments", "commands")
"""What each version's writers record: errors through the API, tracked deployments (markers), `fraisier record`."""


@dataclass
class Writer:
    kind: str
    acknowledged: int


def race(directory: Path, versions: Sequence[Version], rng: random.Random, writers: dict[str, Writer],
         round_: int) -> None:
    """One writer of each kind per version, together, each SIGKILLed (with any command it runs) at a random moment;
    how many of its record calls returned is noted in ``writers``."""
    started: list[tuple[str, str, subprocess.Popen[bytes]]] = []
    for number, version in enumerate(versions):
        for kind in KINDS:
            name = f"{version.name}_{kind}_{round_}_{number}"
            arguments = version.cli if kind == "commands" else ()
            started.append((name, kind, version.worker(f"acknowledge_{kind}", directory, name, *arguments)))
    time.sleep(rng.uniform(0.3, 1.2))
    for name, kind, process in started:
        os.killpg(process.pid, signal.SIGKILL)
        assert process.stdout is not None
        writers[name] = Writer(kind, len(process.stdout.read()))
        process.wait()


def assert_counted_once(directory: Path, writers: dict[str, Writer]) -> None:
    """Each writer's events counted as many times as its calls returned, or once more for the call under way when
    it was killed; a deployment killed in flight counted crashed once; none left active, no hand-over left."""
    values = sample_values(directory / "fraisier.prom")
    wrong = {}
    for name, writer in writers.items():
        if writer.kind == "errors":
            counted = values.get(f'fraisier_deployment_errors_total{{provider="bare_metal",error_type="{name}"}}', 0)
            crashed = 0.0
        else:
            counted = values.get(deployments("bare_metal", "success", name), 0)
            crashed = values.get(deployments("bare_metal", "crashed", name), 0)
        if counted - writer.acknowledged not in (0, 1) or crashed > 1 or counted + crashed - writer.acknowledged > 1:
            wrong[name] = (writer.acknowledged, counted, crashed)
    assert not wrong, f"(acknowledged, counted, crashed): {wrong}"
    assert sum(writer.acknowledged for writer in writers.values()) > 100
    assert values.get('fraisier_active_deployments{provider="bare_metal"}', 0) == 0
    left = [entry.name for entry in os.scandir(directory / ".fraisier-handover")
            if not entry.name.startswith(".") and not entry.name.endswith(".spent")]  # spent: kept for reuse
    assert left == ["sequence"], left


Series = tuple[str, frozenset[tuple[str, str]]]
"""A sample's name and labels, as values.canonical_samples keys them."""


class Scrapes:
    """Scrapes of some URLs in a loop, in a thread, until stopped: what each answered."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = urls
        self.answers: dict[str, list[dict[Series, float]]] = {url: [] for url in urls}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scrape, daemon=True)

    def _scrape(self) -> None:
        while not self._stop.is_set():
            for url in self.urls:
                try:
                    self.answers[url].append(canonical_samples(http_get(url, timeout=30)))
                except (OSError, urllib.error.URLError, ValueError) as error:
                    self.failures.append(f"{url}: {error!r}")
            time.sleep(0.05)

    def __enter__(self) -> Scrapes:
        self._thread.start()
        return self

    def __exit__(self, *exception: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


def assert_read_by_node_exporter_and_promtool(directory: Path) -> None:
    text = (directory / "fraisier.prom").read_text()
    checked = subprocess.run([binary("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")
    with node_exporter(directory) as url:
        scraped = http_get(url)
    assert sample_values(scraped)["node_textfile_scrape_error"] == 0
    assert canonical_samples(scraped, "fraisier_") == canonical_samples(text, "fraisier_")


def assert_monotonic(scrapes: Scrapes, writers: dict[str, Writer]) -> None:
    """No scrape failed, node_exporter never saw a scrape error, and no writer's count ever went back."""
    assert not scrapes.failures, scrapes.failures[:5]
    scrape_error: Series = ("node_textfile_scrape_error", frozenset())
    for url, answers in scrapes.answers.items():
        assert len(answers) > 3, url
        assert all(answer.get(scrape_error, 0) == 0 for answer in answers), url
        for name in writers:
            labels = frozenset({"provider": "bare_metal", "error_type": name}.items())
            key = ("fraisier_deployment_errors_total", labels)
            seen = [answer[key] for answer in answers if key in answer]
            assert seen == sorted(seen), (url, name, seen)


@pytest.mark.slow
def test_an_upgrade_in_progress_counts_every_event_once(tmp_path: Path, release: Version, current: Version) -> None:
    """Both versions' writers (the API, tracked deployments, `fraisier record`) race on one directory, each
    SIGKILLed at a random moment, while each version's `fraisier metrics` and node_exporter serve it and either
    version's `textfile refresh` runs between rounds; then the new version merges what is left."""
    directory = tmp_path / "textfile"
    current.refresh(directory)
    rng = random.Random(20261206)
    writers: dict[str, Writer] = {}
    with ExitStack() as stack:
        urls = [stack.enter_context(version.server(directory)) for version in (release, current)]
        urls.append(stack.enter_context(node_exporter(directory)))
        with Scrapes(urls) as scrapes:
            for round_ in range(4):
                race(directory, [release, current], rng, writers, round_)
                rng.choice([release, current]).refresh(directory)
        current.refresh(directory)
        assert_counted_once(directory, writers)
        # Each server serves the file's counts once it is merged.
        final = sample_values(directory / "fraisier.prom")
        for url in urls[:2]:
            served = sample_values(http_get(url))
            assert {key: served.get(key) for key in final if key.startswith("fraisier_deployments_total")} == {
                key: value for key, value in final.items() if key.startswith("fraisier_deployments_total")}, url
    assert_monotonic(scrapes, writers)
    assert_read_by_node_exporter_and_promtool(directory)


@pytest.mark.slow
def test_a_downgrade_and_back_counts_every_event_once(tmp_path: Path, release: Version, current: Version) -> None:
    """The new version writes (its hand-overs, markers, bookkeeping and layout lines left by writers killed at
    random), then 0.2.0 alone takes over and merges them, then the new version comes back: every event counted
    once at each step."""
    directory = tmp_path / "textfile"
    rng = random.Random(20261207)
    writers: dict[str, Writer] = {}
    for round_ in range(3):
        race(directory, [current, current], rng, writers, round_)
    for round_ in range(3, 6):
        race(directory, [release, release], rng, writers, round_)
    release.refresh(directory)
    assert_counted_once(directory, writers)
    assert_read_by_node_exporter_and_promtool(directory)
    for round_ in range(6, 8):
        race(directory, [current, release], rng, writers, round_)
    current.refresh(directory)
    assert_counted_once(directory, writers)
    assert_read_by_node_exporter_and_promtool(directory)


@pytest.mark.parametrize(("starts", "judges"), [("old", "new"), ("new", "old")])
def test_a_deployment_one_version_started_is_counted_crashed_once_when_the_other_finds_it_killed(
    tmp_path: Path, release: Version, current: Version, starts: str, judges: str
) -> None:
    """`fraisier exec` of one version runs a deployment and is SIGKILLed; the other version's merges count the
    deployment active while it runs, then crashed, once, whichever versions merge after it."""
    starter, judge = {"old": (release, current), "new": (current, release)}[starts]
    assert judge.name == judges
    directory = tmp_path / "textfile"
    judge.refresh(directory)
    # The deployment waits for its stdin to close: it outlives the `fraisier exec` killed, and ends with the test.
    deployment = subprocess.Popen(
        [*starter.cli, "--textfile-dir", str(directory), "exec", "--provider", "bare_metal", "--fraise-type",
         "killed", "--", sys.executable, "-c", "import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE, env=starter.environment, cwd=tmp_path)
    assert deployment.stdin is not None
    try:
        deadline = time.monotonic() + 60
        while not markers(directory):
            assert time.monotonic() < deadline and deployment.poll() is None, "no marker"
            time.sleep(0.05)
        judge.refresh(directory)
        values = sample_values(directory / "fraisier.prom")
        assert values[ACTIVE] == 1 and values.get(deployments("bare_metal", "crashed", "killed"), 0) == 0
        deployment.kill()
        deployment.wait()
        for version in (judge, starter, judge, current):
            version.refresh(directory)
            values = sample_values(directory / "fraisier.prom")
            assert (values[ACTIVE], values[deployments("bare_metal", "crashed", "killed")]) == (0, 1), version.name
    finally:
        deployment.stdin.close()
        deployment.wait()
    assert not markers(directory)


def markers(directory: Path) -> list[str]:
    """The markers of deployments in flight in ``directory`` (their temporaries left out)."""
    try:
        return [name for name in os.listdir(directory / ".fraisier-inflight") if not name.startswith(".")]
    except FileNotFoundError:
        return []


# A process that outlives its installation


@pytest.mark.slow
@pytest.mark.parametrize("through", ["our API", "Fraisier"])
def test_a_long_lived_recorder_records_on_once_its_installation_is_replaced_under_it(
    tmp_path: Path, current_wheel: Path, release_wheel: Path, current: Version, through: str
) -> None:
    """Bug (events lost): a program recording for days (Fraisier's deploy daemon, through the start-up hook) still
    runs when `pip install` replaces the package's files under it (an upgrade, or here a downgrade to 0.2.0). A
    module it imported only later, at its first hand-over or its first deployment tracked, was the other version's,
    mixed with its own: each such call failed "unexpectedly" (an ImportError), and the events were lost at exit.
    A recorder's process now loads every module a later write may need a second after its first write; one that
    imports Fraisier's metrics module, a second after that import (its first write may come after the upgrade)."""
    installation = install(current_wheel, tmp_path / "venv")
    directory = tmp_path / "textfile"
    program = subprocess.Popen(
        [str(installation.python), str(WORKERS), "recorder_outliving_its_installation", str(directory), through],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env=clean_environment(FRAISIER_TEXTFILE_FRAISIER_STATE="off", FRAISIER_TEXTFILE_DIR=str(directory)))
    assert program.stdin is not None and program.stdout is not None and program.stderr is not None
    assert program.stdout.readline() == "recorded\n", program.stderr.read()

    def record(name: str) -> str:
        assert program.stdin is not None and program.stdout is not None
        program.stdin.write(f"{name}\n")
        program.stdin.flush()
        return program.stdout.readline()

    assert record("lived on") == "lived on\n"
    reinstall(release_wheel, installation)
    with lock_held_elsewhere(directory / "fraisier.prom.lock"):
        answers = [record("handed"), record("deployment_handed")]
    answers += [record("after"), record("deployment_after")]
    program.stdin.close()
    assert program.wait(timeout=60) == 0
    stderr = program.stderr.read()
    assert not [answer for answer in answers if "unexpectedly" in answer], answers
    assert "unexpectedly" not in stderr, stderr
    current.refresh(directory)
    values = sample_values(directory / "fraisier.prom")
    recorded = ("before", "handed", "after") if through == "our API" else ("handed", "after")
    assert [values.get(errors("bare_metal", name)) for name in recorded] == [1] * len(recorded)
    assert [values.get(deployments("bare_metal", status, name)) for name in ("deployment_handed", "deployment_after")
            for status in ("success", "crashed")] == [1, 0, 1, 0]


@pytest.mark.slow
def test_fraisier_exec_records_the_end_of_a_deployment_that_outlived_its_installation(
    tmp_path: Path, current_wheel: Path, release_wheel: Path, current: Version
) -> None:
    """Bug (a deployment's end lost): the package replaced under a `fraisier exec` while its command runs (an
    hour-long deployment, an upgrade meanwhile), the end was handed over through the other version's modules."""
    installation = install(current_wheel, tmp_path / "venv")
    directory = tmp_path / "textfile"
    # The command reads one line: the test ends the deployment when it wants.
    deployment = subprocess.Popen(
        [str(installation.script("fraisier-textfile")), "--textfile-dir", str(directory), "exec", "--provider",
         "bare_metal", "--fraise-type", "long", "--", sys.executable, "-c", "import sys; print(sys.stdin.readline())"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env=clean_environment(FRAISIER_TEXTFILE_FRAISIER_STATE="off"))
    assert deployment.stdin is not None and deployment.stdout is not None and deployment.stderr is not None
    deadline = time.monotonic() + 60
    while not markers(directory):
        assert time.monotonic() < deadline and deployment.poll() is None, "no marker"
        time.sleep(0.05)
    reinstall(release_wheel, installation)
    with lock_held_elsewhere(directory / "fraisier.prom.lock"):
        deployment.stdin.write("done\n")
        deployment.stdin.close()
        assert deployment.stdout.readline() == "done\n"  # the command ran, and ended
        assert deployment.wait(timeout=60) == 0
    stderr = deployment.stderr.read()
    assert "unexpectedly" not in stderr and "Traceback" not in stderr, stderr
    current.refresh(directory)
    values = sample_values(directory / "fraisier.prom")
    assert [values.get(deployments("bare_metal", status, "long")) for status in ("success", "crashed")] == [1, 0]


@pytest.mark.slow
def test_fraisier_metrics_merges_on_once_its_installation_is_replaced_under_it(
    tmp_path: Path, current_wheel: Path, release_wheel: Path, current: Version
) -> None:
    """Bug (a server wedged until restarted): the package replaced under a running `fraisier metrics`, its
    scrapes merged the hand-overs waiting through the other version's modules."""
    installation = install(current_wheel, tmp_path / "venv")
    directory = tmp_path / "textfile"
    current.refresh(directory)
    installed = Version("installed", str(installation.python), (str(installation.script("fraisier-textfile")),),
                        clean_environment(FRAISIER_TEXTFILE_FRAISIER_STATE="off"))
    with installed.server(directory) as url:
        reinstall(release_wheel, installation)
        with lock_held_elsewhere(directory / "fraisier.prom.lock"):
            handed = current.run("record", "error", "--provider", "bare_metal", "--error-type", "handed",
                                 "--lock-timeout", "0.1", directory=directory)
        assert handed.returncode == 0, handed.stderr
        assert handovers_in(directory)
        served = sample_values(http_get(url))
    assert served.get(errors("bare_metal", "handed")) == 1
    assert handovers_in(directory) == []


# A store of other families (an application's) beside Fraisier's, on one directory

JOBS = Family("app_jobs_total", Kind.COUNTER, ("kind",), "Jobs run.")


class Application:
    """An application merging its own families into Fraisier's textfile directory with this version's store (as
    the store allows: each store leaves the other's hand-overs for it), while Fraisier's processes still run
    0.2.0, which knows only Fraisier's families."""

    def __init__(self, directory: Path, release: Version) -> None:
        self.directory = directory
        self.release = release
        self.store = StoreOfASchema(directory, schema=Schema([JOBS]))
        release.refresh(directory)

    def hand_over_both(self, error_type: str) -> None:
        """One hand-over of the application's, one of 0.2.0's (`fraisier record error` while the lock is held)."""
        jobs = Changes()
        jobs.add(JOBS, ("backup",), 1)
        self.store.hand_over(jobs)
        with lock_held_elsewhere(self.directory / "fraisier.prom.lock"):
            handed = self.release.run("record", "error", "--provider", "bare_metal", "--error-type", error_type,
                                      "--lock-timeout", "0.1", directory=self.directory)
        assert handed.returncode == 0, handed.stderr
        assert len(handovers_in(self.directory)) == 2

    def assert_each_counted_once(self, error_type: str) -> None:
        TextfileStore(self.directory).merge(Changes())
        self.store.merge(Changes())
        values = sample_values(self.directory / "fraisier.prom")
        assert values.get(SET_ASIDE_FAMILY, 0) == 0
        assert (values['app_jobs_total{kind="backup"}'], values[errors("bare_metal", error_type)]) == (1, 1)
        assert handovers_in(self.directory) == []


def test_0_2_0_leaves_the_hand_overs_of_an_application_s_store_for_it(tmp_path: Path, release: Version) -> None:
    """Bug (events lost): 0.2.0 set the application's hand-over aside as unreadable (a family it does not know).
    This version's store writes the hand-overs of a schema other than the one 0.2.0 knows in a format 0.2.0 leaves
    in place, for a newer version."""
    application = Application(tmp_path / "textfile", release)
    application.hand_over_both("handed")
    release.refresh(application.directory)
    assert not [name for name in handovers_in(application.directory) if not name.endswith(".json")]
    application.assert_each_counted_once("handed")


def test_an_application_s_store_leaves_0_2_0_s_hand_overs_for_fraisier_s(tmp_path: Path, release: Version) -> None:
    """Bug (events lost): the application's store set a hand-over of 0.2.0's aside as unreadable (Fraisier's
    families, none of its own): it carries no schema's fingerprint, as a store of another schema's would. A
    hand-over without one is 0.2.0's, of the one schema 0.2.0 has: left for a store of that schema."""
    application = Application(tmp_path / "textfile", release)
    application.hand_over_both("handed")
    application.store.merge(Changes())
    assert not [name for name in handovers_in(application.directory) if not name.endswith(".json")]
    application.assert_each_counted_once("handed")


def handovers_in(directory: Path) -> list[str]:
    """The hand-overs in ``directory`` and those set aside, their counter, temporaries, spent hand-overs (kept
    for their writers to take back, store/handover_reuse.py) and the memories of those left for another merger
    (store/handover_left.py) left out."""
    return [name for name in os.listdir(directory / ".fraisier-handover")
            if name != "sequence" and not name.startswith(".") and not name.endswith(".spent")
            and ".left-v" not in name]


# Fraisier's state database, read by either version


def fraisier_counts(directory: Path) -> dict[str, float]:
    return {key: value for key, value in sample_values(directory / "fraisier.prom").items()
            if key.startswith(("fraisier_deployments_total", "fraisier_deployment_errors_total", "fraisier_rollbacks"))}


def test_fraisier_s_deployments_are_counted_once_whichever_version_reads_its_database(
    fraisier: Fraisier, tmp_path: Path, release: Version, current: Version
) -> None:
    """Fraisier deploys while 0.2.0 and the new version take turns reading its database (its cursor line written
    by one, read by the other), deployments seen in progress by one finished by the time the other reads: the
    counts are those of the new version reading alone."""
    directory, alone = tmp_path / "textfile", tmp_path / "alone"

    def read_by(version: Version) -> None:
        version.refresh(directory)
        current.refresh(alone)

    fraisier.deploy("api", "success")
    read_by(release)
    in_progress = fraisier.start("api")
    read_by(current)
    fraisier.complete(in_progress, True)
    fraisier.deploy("api", "failed", "Install command failed (exit code 3): uv sync")
    read_by(release)
    in_progress = fraisier.start("api")
    read_by(release)
    fraisier.complete(in_progress, False, "Health check failed after deployment")
    read_by(current)
    rolled_back = fraisier.deploy("api", "success")
    read_by(release)
    fraisier.call("rolled_back", pk=rolled_back)
    read_by(current)
    fraisier.deploy("api", "rolled_back")
    read_by(release)
    read_by(current)
    counts = fraisier_counts(alone)
    # Three finished successes (one marked rolled back later: counted as a rollback, not taken back), two failures,
    # one deployment rolled back as it ended: two rollbacks.
    assert (counts[API_SUCCESS], counts[API_FAILED], counts[API_ROLLED_BACK]) == (3, 2, 1), counts
    assert sum(value for key, value in counts.items() if key.startswith("fraisier_rollbacks_total")) == 2, counts
    assert fraisier_counts(directory) == counts


def test_a_database_restored_then_put_back_while_0_2_0_reads_is_counted_as_0_2_0_alone_counts_it_then_once(
    fraisier: Fraisier, tmp_path: Path, release: Version, current: Version
) -> None:
    """0.2.0's own, which this version cannot change (the changelog's "Upgrading" note): Fraisier's database is
    restored from a backup, read by the new version, then the database it replaced is put back and read by 0.2.0,
    which counts again its deployments past the backup's last, as it does reading alone. Once 0.2.0 is gone, the
    new version counts nothing more of them, and each later deployment once."""
    directory, alone = tmp_path / "textfile", tmp_path / "alone"  # alone: 0.2.0 reads, at every step
    fraisier.deploy("api", "success")
    backup = backup_of(fraisier.database, tmp_path / "backup.db")
    fraisier.deploy("api", "success")
    for version, read in ((current, directory), (release, alone)):
        version.refresh(read)
    fraisier.close()
    replaced = tmp_path / "replaced.db"
    os.replace(fraisier.database, replaced)
    os.replace(backup, fraisier.database)
    current.refresh(directory)
    release.refresh(alone)
    assert fraisier_counts(directory)[API_SUCCESS] == fraisier_counts(alone)[API_SUCCESS] == 2
    os.replace(replaced, fraisier.database)
    release.refresh(directory)
    release.refresh(alone)
    assert fraisier_counts(directory)[API_SUCCESS] == fraisier_counts(alone)[API_SUCCESS] == 3
    current.refresh(directory)
    assert fraisier_counts(directory)[API_SUCCESS] == 3
    with Fraisier(fraisier.root) as again:
        again.deploy("api", "success")
        current.refresh(directory)
        current.refresh(directory)
    assert fraisier_counts(directory)[API_SUCCESS] == 4


def test_both_versions_servers_count_each_of_fraisier_s_deployments_once_while_it_deploys(
    fraisier: Fraisier, tmp_path: Path, release: Version, current: Version
) -> None:
    """Each version's `fraisier metrics` reads Fraisier's database at its scrapes (and merges what is new), each
    version's refresh too, while Fraisier deploys: each deployment is counted once, and no scrape fails."""
    directory = tmp_path / "textfile"
    current.refresh(directory)
    with ExitStack() as stack:
        urls = [stack.enter_context(version.server(directory)) for version in (release, current)]
        with Scrapes(urls) as scrapes:
            for number in range(12):
                fraisier.deploy("api", "success" if number % 3 else "failed")
                (release if number % 2 else current).refresh(directory)
        served = [sample_values(http_get(url)) for url in urls]
    assert not scrapes.failures, scrapes.failures[:5]
    assert all(len(answers) > 3 for answers in scrapes.answers.values())
    current.refresh(directory)
    counts = fraisier_counts(directory)
    assert (counts[API_SUCCESS], counts[API_FAILED]) == (8, 4), counts
    assert [(values[API_SUCCESS], values[API_FAILED]) for values in served] == [(8, 4), (8, 4)]
