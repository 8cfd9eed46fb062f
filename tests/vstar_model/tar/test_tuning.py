"""Automatic σ: the search finds a known optimum within its budget and never exceeds it."""

from __future__ import annotations

import math

import pytest

from vstar_model.tar.tuning import SigmaSearch, round_sigma, search_tar, tar_preset
from vstar_model.tar.unet import TARConfig


def _sigma(preset: str) -> float:
    return float(preset.split("_")[0].split("D")[1])


class Stub:
    """A distance that is smallest at ``best`` σ (log scale), counting its calls."""

    def __init__(self, best: float, levels_penalty=None):
        self.best, self.calls = best, []
        self.levels_penalty = levels_penalty or {}

    def __call__(self, preset: str) -> float:
        self.calls.append(preset)
        levels = tuple(sorted((int(part.split("D")[0]) for part in preset.split("_")), reverse=True))
        return (math.log2(_sigma(preset)) - math.log2(self.best)) ** 2 + self.levels_penalty.get(levels, 0.0)


@pytest.mark.parametrize("best", [0.3, 1.0, 2.7, 9.0, 15.0])
def test_finds_the_optimum_within_the_budget(best):
    stub = Stub(best)
    search = SigmaSearch(budget=8, tolerance=0.5)
    result = search_tar(stub, search)
    assert len(stub.calls) == len(result.trials) <= 8
    assert abs(math.log2(result.best.sigma) - math.log2(best)) < 0.5
    assert result.best.preset == tar_preset((64,), result.best.sigma)
    TARConfig.from_preset(result.best.preset)  # every trial is a valid preset


@pytest.mark.parametrize("budget", range(1, 13))
def test_never_exceeds_the_budget_nor_repeats_a_trial(budget):
    stub = Stub(3.3)
    result = search_tar(stub, SigmaSearch(budget=budget, tolerance=1e-9))
    assert len(stub.calls) <= budget
    assert len(set(stub.calls)) == len(stub.calls)
    assert [trial.index for trial in result.trials] == list(range(len(stub.calls)))


def test_stops_once_the_bracket_is_narrow_enough():
    stub = Stub(2.0)
    result = search_tar(stub, SigmaSearch(budget=40, tolerance=0.5))
    # the bracket, log2(16 / 0.25) = 6 wide, is 6·0.618^(n−1) after n trials: below 0.5 from n = 7
    assert len(stub.calls) == 7 and result.stopped == {(64,): "converged"}


def test_level_sets_share_the_budget_and_the_best_set_wins():
    stub = Stub(4.0, levels_penalty={(64,): 0.5})
    result = search_tar(stub, SigmaSearch(budget=9, level_sets=((64,), (64, 32))))
    assert len(stub.calls) <= 9
    assert {trial.levels for trial in result.trials} == {(64,), (64, 32)}
    assert result.best.levels == (64, 32) and result.best.preset.startswith("64D")
    assert "_32D" in result.best.preset and abs(math.log2(result.best.sigma) - 2) < 0.5


def test_nan_scores_count_as_worst():
    result = search_tar(lambda preset: math.nan if _sigma(preset) > 1 else _sigma(preset), SigmaSearch(budget=6))
    assert result.best.sigma <= 1


def test_round_sigma_and_checks():
    assert [round_sigma(s) for s in (1.4142, 0.2679, 11.31)] == [1.4, 0.27, 11.0]
    assert tar_preset((32, 64), 1.4) == "64D1.4_32D1.4"
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        SigmaSearch(sigma_min=4, sigma_max=2)
    with pytest.raises(ValueError, match="budget"):
        SigmaSearch(budget=0)
    with pytest.raises(ValueError, match="level set"):
        SigmaSearch(level_sets=((63,),))
