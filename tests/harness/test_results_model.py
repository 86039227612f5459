"""results.json through its typed model (harness/results.py): the checked-in runs load, give
back exactly what they hold, and a file that does not fit fails with the path of the mistake."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from cryptostream_lab.harness.results import Results, dumps, load_results, parse_results

DATA = Path(__file__).parent / "data"
FILES = sorted(DATA.glob("*.json"))


def test_there_are_checked_in_results() -> None:
    assert len(FILES) >= 3


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_a_checked_in_results_json_loads_and_round_trips(path: Path) -> None:
    results = load_results(path)
    assert isinstance(results, Results)
    assert results.schema_ == 1 and results.experiment.name and results.groups
    assert results.as_dict() == orjson.loads(path.read_bytes())  # nothing lost, nothing added
    assert orjson.loads(dumps(results)) == orjson.loads(path.read_bytes())
    for group in results.groups:
        assert group.processors >= 1
        for trial in group.trials:
            assert trial.processors == group.processors and trial.repetition == group.repetition
        if group.search is not None:
            assert {t.kind for t in group.search.trials} <= {"search", "capacity"}


def test_typed_fields_read_as_their_types() -> None:
    results = load_results(DATA / "scaling-budgeted-results.json")
    assert results.budgets is not None and results.budgets.processor_cpu == 0.1
    trial = results.groups[0].trials[0]
    assert trial.kind == "fixed" and trial.loadgen is not None
    assert isinstance(trial.loadgen.sent, int)
    sampled = [
        t
        for g in load_results(DATA / "results.json").groups
        for t in g.trials
        if t.series is not None
    ]
    assert sampled and all(len(t.series.t) == len(t.series.produced) for t in sampled if t.series)
    assert isinstance(results.environment.cores, int)


def test_a_file_that_does_not_fit_names_the_mistake(tmp_path: Path) -> None:
    raw = orjson.loads((DATA / "results.json").read_bytes())
    raw["groups"][0]["trials"][0]["processors"] = "two"
    with pytest.raises(ValueError, match=r"groups\.0\.trials\.0\.processors"):
        parse_results(orjson.dumps(raw))
    (tmp_path / "results.json").write_bytes(orjson.dumps({"schema": 1}))
    with pytest.raises(ValueError, match="experiment"):
        load_results(tmp_path)
