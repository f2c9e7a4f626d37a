"""Hyperband with late promotion: the pruner of ``tune: {pruner: hyperband}``.

It is Optuna's Hyperband (``optuna.pruners.HyperbandPruner``): the same brackets, the same
share of trials in each (a trial's bracket from a hash of the study's name and its
number), and the same rule at each rung (a trial goes on when it is in the top
``1/reduction`` of the values its bracket has reached at that epoch; while a rung holds
fewer than ``reduction`` values, only the best goes on). What it adds is what Optuna
cannot do, since Optuna never pauses a trial: a trial stopped at a rung is *promoted
later* when enough trials have fallen below it there, as asynchronous successive halving
(ASHA) promotes a paused one. The study then continues it from its checkpoint in a new
trial, which carries its parameters, its bracket and its epochs (``CONTINUES``); a
trial that is continued no longer competes itself, its continuation does for it.

Duck-typed against Optuna's trials (``number``, ``state``, ``user_attrs``,
``intermediate_values``), so that this module imports nothing.
"""

from __future__ import annotations

import binascii
import dataclasses
import math
from collections.abc import Callable
from typing import Any

BRACKET = "cnnspec.bracket"  # a continuation's user attribute: the bracket of the trial it continues
CONTINUES = "cnnspec.continues"  # ... and that trial's number


@dataclasses.dataclass(frozen=True)
class Hyperband:
    """Brackets over ``min_epochs`` to ``epochs``, each a successive halving by ``reduction``."""

    epochs: int
    maximize: bool
    reduction: int = 3
    min_epochs: int = 1

    @property
    def brackets(self) -> int:
        """floor(log_reduction(epochs / min_epochs)) + 1, in integers."""
        count, reach = 1, self.min_epochs * self.reduction
        while reach <= self.epochs:
            count, reach = count + 1, reach * self.reduction
        return count

    @property
    def shares(self) -> list[int]:
        """Each bracket's share of the trials, as Optuna allocates them (the most aggressive
        bracket, 0, gets the most)."""
        n = self.brackets
        return [math.ceil(n * self.reduction ** (n - 1 - b) / (n - b)) for b in range(n)]

    def bracket(self, study_name: str, trial: Any) -> int:
        """A trial's bracket: its origin's for a continuation, else Optuna's hash of its number."""
        if BRACKET in trial.user_attrs:
            return int(trial.user_attrs[BRACKET])
        n = binascii.crc32(f"{study_name}_{trial.number}".encode()) % sum(self.shares)
        for bracket, share in enumerate(self.shares):
            n -= share
            if n < 0:
                return bracket
        raise AssertionError("unreachable: the shares sum to the modulus")

    def rungs(self, bracket: int) -> list[int]:
        """The epochs after which a trial of ``bracket`` may be stopped (the last epoch is
        not one: a trial there has finished)."""
        steps, step = [], self.min_epochs * self.reduction**bracket
        while step < self.epochs:
            steps.append(step)
            step *= self.reduction
        return steps

    def prune(self, study: Any, trial: Any) -> bool:
        """Optuna's pruner interface: whether ``trial`` stops after its last reported epoch."""
        step = trial.last_step
        bracket = self.bracket(study.study_name, trial)
        if step is None or step not in self.rungs(bracket):
            return False
        value = trial.intermediate_values[step]
        if math.isnan(value):
            return True
        trials = study.get_trials(deepcopy=False)
        return not self.goes_on(value, [*self.rung_values(study.study_name, trials, bracket, step, but=trial.number), value])

    def goes_on(self, value: float, rung: list[float]) -> bool:
        """Whether ``value`` is in the top ``1/reduction`` of ``rung`` (which holds it);
        with fewer than ``reduction`` values, whether it is the best."""
        place = max(len(rung) // self.reduction - 1, 0)
        ranked = sorted((v for v in rung if not math.isnan(v)), reverse=self.maximize)
        if not ranked:
            return False
        bar = ranked[min(place, len(ranked) - 1)]
        return value >= bar if self.maximize else value <= bar

    def rung_values(self, study_name: str, trials: list[Any], bracket: int, step: int, but: int | None = None) -> list[float]:
        """The values trials of ``bracket`` (all but trial ``but``) reached at epoch
        ``step``, one a line of continuations (a continued trial's epochs are its
        continuation's too)."""
        continued = continuations(trials)
        return [
            float(t.intermediate_values[step])
            for t in trials
            if t.number != but and t.number not in continued and step in t.intermediate_values and self.bracket(study_name, t) == bracket
        ]

    def promotion(self, study_name: str, trials: list[Any], usable: Callable[[Any], bool] = lambda _: True) -> Any | None:
        """A trial to continue now, or None: of the trials this pruner stopped, that nobody
        continues yet and that can be continued (``usable``: it has a checkpoint), one that
        its rung now ranks among those that go on; from the highest rung first (as ASHA),
        the best value first."""
        continued = continuations(trials)
        found = []
        for trial in trials:
            if trial.state.name != "PRUNED" or trial.number in continued or trial.last_step is None:
                continue  # (an infeasible sample is pruned with no epochs)
            bracket, step = self.bracket(study_name, trial), trial.last_step
            if step not in self.rungs(bracket):
                continue  # not stopped by a rung of its bracket
            value = trial.intermediate_values[step]
            if self.goes_on(value, self.rung_values(study_name, trials, bracket, step)) and usable(trial):
                found.append((step, value if self.maximize else -value, -trial.number, trial))
        return max(found, key=lambda entry: entry[:3])[3] if found else None


def continuations(trials: list[Any]) -> dict[int, int]:
    """Each trial a later one continues: its number, and the continuation's."""
    return {int(t.user_attrs[CONTINUES]): t.number for t in trials if CONTINUES in t.user_attrs}
