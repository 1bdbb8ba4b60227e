"""fraisier_textfile.logger: loggers that import logging at their first use, and are logging's own loggers then."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

from fraisier_textfile import logger
from tests.processes import WITNESSED_LOCK


def run(script: str) -> list[str]:
    """The lines ``script`` prints, run in a fresh interpreter (where nothing has imported logging yet)."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_records_reach_logging_s_logger_of_that_name(caplog: pytest.LogCaptureFixture) -> None:
    log = logger.get_logger("fraisier_textfile.tests.deferred")
    with caplog.at_level(logging.DEBUG, logger="fraisier_textfile.tests.deferred"):
        log.debug("a %s", "detail")
        try:
            raise ValueError("bad")
        except ValueError:
            log.warning("went %s", "wrong", exc_info=True)
        log.log(logger.ERROR, "numbered")
    assert [(record.name, record.levelno, record.getMessage()) for record in caplog.records] == [
        ("fraisier_textfile.tests.deferred", logging.DEBUG, "a detail"),
        ("fraisier_textfile.tests.deferred", logging.WARNING, "went wrong"),
        ("fraisier_textfile.tests.deferred", logging.ERROR, "numbered"),
    ]
    assert caplog.records[1].exc_info is not None and caplog.records[1].exc_info[0] is ValueError
    assert log.isEnabledFor(logging.DEBUG) is logging.getLogger("fraisier_textfile.tests.deferred").isEnabledFor(
        logging.DEBUG)


def test_the_level_numbers_are_logging_s() -> None:
    assert (logger.DEBUG, logger.INFO, logger.WARNING, logger.ERROR) == (
        logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)


def test_logging_is_imported_at_the_first_use_not_before() -> None:
    assert run("""
        import sys
        from fraisier_textfile.logger import get_logger
        log = get_logger("fraisier_textfile.x")
        print("logging" in sys.modules)
        log.info("nothing shown: no handler, and below logging's last resort")
        print("logging" in sys.modules)
    """) == ["False", "True"]


def test_a_setup_runs_once_just_before_the_first_record() -> None:
    assert run("""
        import sys
        from fraisier_textfile import logger
        def setup():
            import logging
            logging.basicConfig(stream=sys.stdout, format="%(levelname)s %(message)s", level=logging.INFO)
            print("setup")
        logger.at_first_use(setup)
        print("registered")
        log = logger.get_logger("fraisier_textfile.x")
        log.info("first")
        log.info("second")
    """) == ["registered", "setup", "INFO first", "INFO second"]


def test_a_setup_runs_at_once_where_logging_is_imported_already() -> None:
    assert run("""
        import logging
        from fraisier_textfile import logger
        logger.at_first_use(lambda: print("setup"))
        print("registered")
    """) == ["setup", "registered"]


def test_the_store_and_settings_import_no_logging() -> None:
    """The record path's library modules: a merge with nothing to say does not import logging."""
    assert run("""
        import sys
        import fraisier_textfile.settings, fraisier_textfile.store.textfile
        print("logging" in sys.modules)
    """) == ["False"]


def test_a_record_made_while_another_thread_runs_the_setup_waits_for_it() -> None:
    """The CLI's handler is set up once; a record from another thread meanwhile goes through it too, not to
    logging's last resort."""
    assert run(textwrap.dedent("""
        import sys, threading
        from fraisier_textfile import logger
        started, met = threading.Event(), threading.Event()
        # WITNESSED LOCK

        def setup():
            import logging
            started.set()
            # Until the other thread's record waits for this setup (or, were it not to wait, is made): waited for,
            # never timed out on.
            assert met.wait(60), "the other thread never logged"
            logging.basicConfig(stream=sys.stdout, format="handled %(message)s")
        # The setup's lock: met once the main thread finds it held and waits for it.
        logger._setting_up = WitnessedLock(logger._setting_up, met)
        logger.at_first_use(setup)
        log = logger.get_logger("fraisier_textfile.x")
        first = threading.Thread(target=lambda: log.warning("a"))  # looked up in that thread
        first.start()
        assert started.wait(60)
        log.warning("b")
        met.set()
        first.join(60)
        assert not first.is_alive()
    """).replace("# WITNESSED LOCK\n", WITNESSED_LOCK)) == ["handled a", "handled b"]


def test_a_setup_that_fails_never_fails_the_record() -> None:
    """Logging is on the metrics path: a broken setup leaves the records to logging's last resort."""
    assert run("""
        import sys
        from fraisier_textfile import logger
        def setup():
            raise OSError("no stderr")
        logger.at_first_use(setup)
        logger.get_logger("fraisier_textfile.x").warning("still recorded")
        print("went on")
    """) == ["went on"]
