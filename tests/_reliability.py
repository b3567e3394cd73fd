"""Pytest plugin of the reliability/security suite: the ``reliability`` marker, the
``observe`` fixture, and the generated table of ``docs/RELIABILITY.md``.

Test modules load it with ``pytest_plugins = ["_reliability"]`` and mark each scenario::

    @pytest.mark.reliability(scenario="Truncated JPEG", expected="failed: 'truncated'")
    def test_x(observe):
        ...
        observe(f"exit 3, error {err!r}")    # what actually happened, for the table

(``test_reliability_support.scenario(name, expected, area)`` is a shorthand for the mark.) Every marked
test's outcome (passed / failed / skipped), duration and observations are collected; when
``$JOINTEMBED_RELIABILITY_REPORT`` names a file, the session writes the Markdown report
there (prose from ``tests/reliability_report.py``). ``python tests/reliability_report.py``
runs the suite with that variable set.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

MARKER = "reliability"
REPORT_ENV = "JOINTEMBED_RELIABILITY_REPORT"
_MARKER_HELP = (f"{MARKER}(scenario, expected, area=''): a reliability/security scenario; "
                "its outcome goes into docs/RELIABILITY.md")


@dataclass
class Result:
    """One marked test's outcome, for the report."""

    nodeid: str
    scenario: str
    expected: str
    area: str
    outcome: str = "not run"
    seconds: float = 0.0
    observed: list[str] = field(default_factory=list)
    error: str = ""


_results: dict[str, Result] = {}


def pytest_configure(config):
    config.addinivalue_line("markers", _MARKER_HELP)


def _marker(item):
    return item.get_closest_marker(MARKER) if hasattr(item, "get_closest_marker") else None


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        m = _marker(item)
        if m is not None and item.nodeid not in _results:
            _results[item.nodeid] = Result(item.nodeid, m.kwargs.get("scenario", item.name),
                                           m.kwargs.get("expected", ""), m.kwargs.get("area", ""))


@pytest.fixture
def observe(request):
    """``observe("text")`` records an observation of the running scenario (report column)."""
    res = _results.get(request.node.nodeid)

    def add(text: str) -> None:
        if res is not None:
            res.observed.append(" ".join(str(text).split()))

    return add


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    res = _results.get(item.nodeid)
    if res is None:
        m = _marker(item)
        if m is None:
            return rep
        res = _results[item.nodeid] = Result(item.nodeid, m.kwargs.get("scenario", item.name),
                                             m.kwargs.get("expected", ""), m.kwargs.get("area", ""))
    if rep.when in ("setup", "call"):
        res.seconds += rep.duration   # setup too: module fixtures run the shared CLI jobs
    if rep.failed:
        res.outcome = "FAILED" if rep.when == "call" else f"ERROR ({rep.when})"
        res.error = " ".join(str(rep.longrepr).splitlines()[-1:])[:300] if rep.longrepr else ""
    elif rep.skipped:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        res.outcome, res.error = "skipped", str(reason)[:300]
    elif rep.when == "call" and res.outcome == "not run":
        res.outcome = "passed"
    return rep


def pytest_sessionfinish(session, exitstatus):
    target = os.environ.get(REPORT_ENV)
    if not target or not _results:
        return
    import reliability_report  # tests/ is on sys.path (rootdir insertion)

    path = Path(target)
    if not path.is_absolute():
        path = Path(session.config.rootpath) / path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(reliability_report.render(list(_results.values()), time.strftime("%Y-%m-%d %H:%M %Z")),
                    encoding="utf-8")


@pytest.fixture(scope="session")
def own_server(tmp_path_factory):
    """A dedicated pgserver cluster (:class:`test_reliability_support.OwnServer`) that tests
    may stop, restart and re-configure; the session's shared server is never touched.
    Tests that stop it must start it again."""
    from test_reliability_support import OwnServer

    srv = OwnServer(tmp_path_factory.mktemp("own-pgdata"))
    yield srv
    srv.close()
