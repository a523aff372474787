"""Quality estimation (QE): a reference-free score per hypothesis, from a model kdst does not ship.

Where a training set has transcripts but no translations, Seq-Inter cannot compare the teacher's
hypotheses with a reference; a QE model (COMET-QE, CometKiwi, ...) reads the source and a
hypothesis and estimates its quality.  kdst depends on no such model: a QE scorer is any callable

    scorer(source: str, hypotheses: list[str]) -> Sequence[float]

one value per hypothesis (the n-best of one utterance, in rank order), higher is better.
``kdst rescore --metric qe:MODULE:FUNCTION --src SOURCE_TEXT`` imports ``MODULE`` (a module on
the ``PYTHONPATH`` or installed) and calls ``FUNCTION`` once per utterance with its source line;
a model that is slow to load should load once at import or on its first call and keep itself.
"""

from __future__ import annotations

import importlib
import math
from typing import Protocol, Sequence

from kdst.errors import KdstError

PREFIX = "qe:"


class QEScorer(Protocol):
    def __call__(self, source: str, hypotheses: list[str]) -> Sequence[float]: ...


def is_qe(metric: str) -> bool:
    return metric.startswith(PREFIX)


def load_qe(metric: str) -> QEScorer:
    """The function that ``qe:MODULE:FUNCTION`` names; a one-line KdstError if there is none."""
    module_name, colon, function_name = metric[len(PREFIX):].rpartition(":")
    if not is_qe(metric) or not colon or not module_name or not function_name:
        raise KdstError(f"--metric {metric}: a QE scorer is named qe:MODULE:FUNCTION")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise KdstError(f"--metric {metric}: cannot import {module_name} ({e})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise KdstError(f"--metric {metric}: {module_name} has no function {function_name}")
    return function


def qe_scores(scorer: QEScorer, name: str, source: str, hypotheses: list[str]) -> list[float]:
    """``scorer(source, hypotheses)`` checked: one finite number per hypothesis."""
    scores = list(scorer(source, hypotheses))
    if len(scores) != len(hypotheses):
        raise KdstError(f"QE scorer {name} gave {len(scores)} scores for {len(hypotheses)} hypotheses")
    try:
        values = [float(s) for s in scores]
    except (TypeError, ValueError):
        raise KdstError(f"QE scorer {name} gave a score that is not a number: {scores}") from None
    if not all(math.isfinite(v) for v in values):
        raise KdstError(f"QE scorer {name} gave a score that is not finite: {values}")
    return values
