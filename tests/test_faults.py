"""The fault-injection suite: every bad input and every fault of ``bench/robustness.py``, as tests.

A reference lake is made once without interruption (tiny random GPT-2, small grid, no
Prefect); each fault then kills a writer at a publish step, fills a small disk, corrupts
a file in place or runs two writers at once, and the lake is checked against the
reference. The whole fault list is slow-marked; two representative faults always run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import robustness

FAULTS = dict(robustness.faults())
ALWAYS = ("kill -9 bicluster at 'replaced' of metrics", "corrupt activations: flip")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return robustness.build_reference(tmp_path_factory.mktemp("robustness"))


def test_every_bad_input_is_one_line_exit_2_and_leaves_the_lake_unchanged(reference: dict[str, Path]) -> None:
    outcomes = robustness.check_bad_inputs(reference)
    assert len(outcomes) >= 60
    failed = [f"{o.name}: {o.detail}" for o in outcomes if not o.ok]
    assert not failed, "\n".join(failed)
    print("\n" + robustness.tally(outcomes))


@pytest.mark.parametrize("name", ALWAYS)
def test_representative_fault_is_survived(reference: dict[str, Path], name: str) -> None:
    survived, detail = FAULTS[name](reference)
    assert survived, detail


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in FAULTS if name not in ALWAYS])
def test_fault_is_survived(reference: dict[str, Path], name: str) -> None:
    survived, detail = FAULTS[name](reference)
    assert survived, detail
