"""pytest plugin behind the Reliability table, docs/reliability.md (see :mod:`testbed.reliability`).

A fault test says what it injects and checks with ``@pytest.mark.reliability(fault=..., checked=...)``
and adds measured figures with the ``reliability`` fixture (``reliability.detail("0 duplicates")``).
When the session ends, the outcomes of those tests are merged into the run results
``.warmlet/results/reliability.json`` (untracked: a test run rewrites no tracked file);
``warmlet bench --report`` publishes them into docs/reliability.md.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from testbed import reliability as rel

_KEY = pytest.StashKey[dict[str, rel.Row]]()


class Details:
    """Figures a fault test reports for its row (``reliability.detail("10 kills, 0 duplicates")``)."""

    def __init__(self, row: rel.Row | None) -> None:
        self._row = row

    def detail(self, text: str) -> None:
        if self._row is not None:
            self._row.details.append(text)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability(fault, checked): a row of docs/reliability.md's table")
    config.stash[_KEY] = {}


def _row_for(item: pytest.Item) -> rel.Row | None:
    mark = item.get_closest_marker("reliability")
    if mark is None:
        return None
    rows = item.config.stash[_KEY]
    if item.nodeid not in rows:
        rows[item.nodeid] = rel.Row(
            id=item.nodeid,
            fault=str(mark.kwargs["fault"]),
            checked=str(mark.kwargs["checked"]),
            outcome=rel.PASSED,
            when=dt.date.today().isoformat(),
        )
    return rows[item.nodeid]


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Details:
    return Details(_row_for(request.node))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, None]:
    row = _row_for(item)
    t0 = time.monotonic()
    yield
    if row is not None:
        row.seconds = round(time.monotonic() - t0, 1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    row = _row_for(item)
    if row is None:
        return
    if report.failed:
        row.outcome = rel.FAILED
    elif report.skipped and row.outcome != rel.FAILED:
        row.outcome = rel.SKIPPED


def pytest_sessionfinish(session: pytest.Session) -> None:
    rows = session.config.stash.get(_KEY, {})
    if not rows:
        return
    root = Path(str(session.config.rootpath))
    store = root / rel.RUN_RESULTS
    old = rel.load_rows(store)
    merged = rel.merge(old, rows.values(), rel.existing_tests(old, root) | set(rows))
    rel.save_rows(store, merged)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows = config.stash.get(_KEY, {})
    if rows:
        terminalreporter.write_line(
            f"reliability: {len(rows)} row(s) recorded in {rel.RUN_RESULTS}; "
            f"`warmlet bench --report` publishes them to {rel.DOC}"
        )
