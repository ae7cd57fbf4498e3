"""What the verbs print is unchanged by the architecture change (issue 19): `predict` in every
format (single-label, with a stored decision, abstaining, multi-label with windows), `evaluate
--json`, `calibrate --json` and `prepare --json`, against tests/fixtures/golden, which the code
before the change wrote (tests/fixtures/make_golden.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.finetune_helpers import install_tokenizer
from tests.fixtures.make_golden import COMMANDS, GOLDEN, places, run

#: Outputs whose floats come from sums over many texts: equal to float32's rounding, not bit for bit
#: (CPU kernels may sum in another order). Everything else is compared byte for byte.
SUMMED = {"evaluate-json", "evaluate-decision-json", "evaluate-ml-json", "calibrate-json"}


def same(got: Any, want: Any, where: str = "") -> None:
    """``got`` equals ``want``: the same keys in the same order, floats within 1e-6 relative."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), where
        for key in want:
            same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            same(a, b, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-12), where
    else:
        assert got == want, where


@pytest.fixture(scope="module")
def where(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return places(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize(("name", "command"), COMMANDS, ids=[name for name, _ in COMMANDS])
def test_the_output_is_what_the_code_before_the_change_printed(
    name: str, command: list[str], where: dict[str, str]
) -> None:
    install_tokenizer()  # into this test's own cache: prepare reports token lengths with it
    got = run(name, command, where)
    want = (GOLDEN / f"{name}.out").read_text(encoding="utf-8")
    if name in SUMMED:
        same(json.loads(got), json.loads(want))
    else:
        assert got == want
