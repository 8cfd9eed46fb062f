"""Automatic TAR σ: a closed-loop search for the band width whose videos come closest to real ones.

The paper picks σ by hand (Fig. 12: too small and frames lose coherence, too large and the video
freezes), and the right value depends on the content. :func:`search_tar` treats "how far are
this prompt's videos from a real reference distribution" (lower is better) as a function of σ
and searches it within a budget of trial generations.

Strategy: golden-section search on log₂ σ over ``[sigma_min, sigma_max]`` (the objective is
expected to be unimodal in σ: a distance falling towards the right band width and rising past it),
for each candidate set of levels in turn (the budget split evenly between them). Trial σ values
are rounded to two significant digits, so presets stay readable (``64D1.4``).
Stopping rule, per level set: its share of the budget is spent, or the bracket is narrower than
``tolerance`` in log₂ σ, or rounding makes the next σ one already tried. The winner is the best
trial seen (not the bracket's centre), ties going to the earlier trial. The search never calls
the objective more than ``budget`` times, and never twice for one preset.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vstar_model.tar.bands import check_sigma
from vstar_model.tar.unet import LEVELS

_GOLDEN = (math.sqrt(5) - 1) / 2  # 0.618…: the bracket shrinks by this per trial


@dataclass(frozen=True)
class SigmaSearch:
    """Search space, budget and stopping rule of :func:`search_tar`.

    Attributes:
        sigma_min, sigma_max: the σ range searched (log scale).
        budget: the most trials (objective calls) in all.
        tolerance: a level set's search stops once its bracket is narrower than this in log₂ σ
            (0.5: within a factor √2 of the best σ).
        level_sets: the TAR levels to try, each with one σ at all its levels, e.g.
            ``((64,), (64, 32))``; the budget is split evenly between them.
    """

    sigma_min: float = 0.25
    sigma_max: float = 16.0
    budget: int = 8
    tolerance: float = 0.5
    level_sets: tuple[tuple[int, ...], ...] = ((64,),)

    def __post_init__(self) -> None:
        low, high = check_sigma(self.sigma_min), check_sigma(self.sigma_max)
        if not math.isfinite(high) or low >= high:
            raise ValueError(f"the σ range must be finite with sigma_min < sigma_max, got [{low}, {high}]")
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            raise ValueError(f"the tuning budget must be an int >= 1 trial, got {self.budget!r}")
        if not self.tolerance > 0:
            raise ValueError(f"the tuning tolerance must be > 0, got {self.tolerance!r}")
        if not self.level_sets:
            raise ValueError("tuning needs at least one set of TAR levels")
        for levels in self.level_sets:
            if not levels or len(set(levels)) != len(levels) or any(level not in LEVELS for level in levels):
                raise ValueError(
                    f"TAR level set {levels!r} must name distinct levels among {', '.join(map(str, LEVELS))}"
                )
        if len(self.level_sets) > self.budget:
            raise ValueError(f"a budget of {self.budget} trials cannot try {len(self.level_sets)} level sets")


@dataclass(frozen=True)
class Trial:
    """One objective evaluation: ``preset`` (e.g. ``64D1.4``) scored ``score`` (lower is better)."""

    index: int
    levels: tuple[int, ...]
    sigma: float
    preset: str
    score: float


@dataclass
class SearchResult:
    trials: list[Trial] = field(default_factory=list)
    stopped: dict[tuple[int, ...], str] = field(default_factory=dict)
    """Per level set, why its search ended: ``"budget"``, ``"converged"`` or ``"repeated"``."""

    @property
    def best(self) -> Trial:
        """The lowest score (NaN counts as worst), the earliest trial on a tie."""
        return min(self.trials, key=lambda trial: (_worst_if_nan(trial.score), trial.index))


def _worst_if_nan(score: float) -> float:
    return math.inf if math.isnan(score) else score


def round_sigma(sigma: float) -> float:
    """σ to two significant digits (1.4142 → 1.4, 0.2679 → 0.27, 11.31 → 11)."""
    return float(f"{sigma:.2g}")


def tar_preset(levels: Sequence[int], sigma: float) -> str:
    """``64D1.4_32D1.4``: the preset with ``sigma`` at every level, highest level first."""
    return "_".join(f"{level}D{sigma:g}" for level in sorted(levels, reverse=True))


def search_tar(objective: Callable[[str], float], search: SigmaSearch = SigmaSearch()) -> SearchResult:
    """Find the TAR preset minimising ``objective`` (a TAR preset string → a finite score).

    See the module docstring for the strategy and stopping rule. A NaN score counts as the worst
    possible; an exception from ``objective`` propagates.
    """
    result = SearchResult()
    shares = [search.budget // len(search.level_sets)] * len(search.level_sets)
    for extra in range(search.budget % len(search.level_sets)):
        shares[extra] += 1
    for levels, share in zip(search.level_sets, shares):
        result.stopped[levels] = _golden_section(objective, search, tuple(levels), share, result.trials)
    return result


def _golden_section(objective, search: SigmaSearch, levels: tuple[int, ...], budget: int, trials: list[Trial]) -> str:
    scores: dict[float, float] = {}  # log₂ σ → score, of this level set's trials

    def evaluate(x: float) -> float | None:
        """The score at the rounded σ nearest 2**x; None when that σ was tried already."""
        sigma = round_sigma(2.0**x)
        x = math.log2(sigma)
        if x in scores:
            return None
        preset = tar_preset(levels, sigma)
        score = float(objective(preset))
        scores[x] = _worst_if_nan(score)
        trials.append(Trial(index=len(trials), levels=levels, sigma=sigma, preset=preset, score=score))
        return x

    low, high = math.log2(search.sigma_min), math.log2(search.sigma_max)
    if budget == 1:
        evaluate((low + high) / 2)
        return "budget"
    # Two interior points at the golden ratio; each later trial shrinks the bracket by 0.618.
    left = evaluate(high - _GOLDEN * (high - low))
    right = evaluate(low + _GOLDEN * (high - low))
    if left is None or right is None:
        return "repeated"
    used = 2
    while True:
        if used >= budget:
            return "budget"
        if scores[left] <= scores[right]:  # the minimum lies in [low, right]
            high, kept = right, left
            new_x = high - _GOLDEN * (high - low)
        else:  # in [left, high]
            low, kept = left, right
            new_x = low + _GOLDEN * (high - low)
        if high - low < search.tolerance:
            return "converged"
        new = evaluate(new_x)
        if new is None:
            return "repeated"
        used += 1
        left, right = sorted((kept, new))  # rounding may put the new point on either side
