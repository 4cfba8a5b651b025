"""Paired comparison of two classifiers on the same images: McNemar's exact test.

Two models scored on the same images differ only where one is right and the other wrong, so the
test looks at those discordant images alone: ``b`` (the candidate right, the baseline wrong) and
``c`` (the reverse). Under "neither is better" ``b`` is Binomial(b + c, 1/2). This is far less noisy
than comparing two accuracies as if they came from different images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class PairedComparison:
    """A candidate against a baseline on the same ``n`` images.

    Attributes:
        n: images compared.
        b: images the candidate gets right and the baseline wrong.
        c: images the baseline gets right and the candidate wrong.
        p_better: one-sided exact p-value of "the candidate is no better" (small: it is better).
        p_two_sided: exact two-sided McNemar p-value.
    """

    n: int
    b: int
    c: int
    p_better: float
    p_two_sided: float

    @property
    def gain(self) -> float:
        """Accuracy difference, candidate minus baseline."""
        return (self.b - self.c) / self.n if self.n else 0.0

    def clearly_better(self, alpha: float) -> bool:
        """More wins than losses and one-sided ``p_better < alpha``."""
        return self.b > self.c and self.p_better < alpha

    def to_dict(self) -> dict:
        return {**asdict(self), "gain": self.gain}


def _binom_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), exactly (log-space sums, fine for any n)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    from math import exp, lgamma, log

    terms = [lgamma(n + 1) - lgamma(i + 1) - lgamma(n - i + 1) - n * log(2.0) for i in range(k, n + 1)]
    top = max(terms)
    return float(min(1.0, exp(top) * sum(exp(t - top) for t in terms)))


def mcnemar(candidate_correct, baseline_correct) -> PairedComparison:
    """Compare per-image correctness (boolean arrays over the same images, same order)."""
    a = np.asarray(candidate_correct, dtype=bool)
    z = np.asarray(baseline_correct, dtype=bool)
    if a.shape != z.shape or a.ndim != 1:
        raise ValueError(f"paired comparison needs two 1-D arrays of the same length, got {a.shape} and {z.shape}")
    b = int((a & ~z).sum())
    c = int((~a & z).sum())
    m = b + c
    p_better = _binom_tail(b, m)
    p_two = 1.0 if m == 0 else min(1.0, 2.0 * min(_binom_tail(b, m), _binom_tail(c, m)))
    return PairedComparison(n=int(a.size), b=b, c=c, p_better=p_better, p_two_sided=p_two)


__all__ = ["PairedComparison", "mcnemar"]
