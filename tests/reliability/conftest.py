"""Every scenario gets a row in the report, also when it fails half-way."""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from tests.reliability import harness


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        item.stash[_FAILURE] = str(call.excinfo.value) if call.excinfo else "failed"


_FAILURE = pytest.StashKey[str]()


@pytest.fixture(autouse=True)
def _record_aborted_runs(request: pytest.FixtureRequest) -> Iterator[None]:
    harness.ACTIVE.clear()
    yield
    why = request.node.stash.get(_FAILURE, "")
    for run in harness.ACTIVE:
        if not run.recorded:
            run.abort(why.splitlines()[0] if why else "the test ended before the verdict")
    harness.ACTIVE.clear()
