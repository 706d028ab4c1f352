"""Confidence intervals for accuracy and agreement, and the paired test for a top-1 difference.

Counts in, fractions or percentages out; no scipy (not a dependency), only `math`.

- One proportion (top-1, agreement): the Wilson score interval. Unlike the normal approximation
  it stays inside [0, 1] and keeps its coverage near 0 % and 100 %, where agreements live.
- A paired difference (Δtop-1 of an artifact against the reference on the same images):
  Newcombe's hybrid score interval (Newcombe 1998, "Improved confidence intervals for the
  difference between binomial proportions based on paired data", method 10), built from the two
  Wilson intervals and the correlation of the paired outcomes.
- Whether that difference is real: McNemar's exact test, a two-sided binomial test (p = ½) on the
  discordant pairs only (images one model gets right and the other wrong).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054  # two-sided 95 %
SIGNIFICANCE = 0.05


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of `successes` out of `n`, as fractions; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be within 0..{n}, got {successes}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def wilson_percent(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    low, high = wilson_interval(successes, n, z)
    return 100.0 * low, 100.0 * high


@dataclass(frozen=True)
class PairedCounts:
    """Top-1 correctness of a candidate and a reference on the same n images.

    both: both right; only_candidate: candidate right, reference wrong; only_reference: the
    reverse; neither: both wrong.
    """

    both: int
    only_candidate: int
    only_reference: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.only_candidate + self.only_reference + self.neither

    @property
    def delta(self) -> float:
        """Candidate minus reference top-1, as a fraction."""
        return (self.only_candidate - self.only_reference) / self.n if self.n else 0.0


def paired_delta_interval(counts: PairedCounts, z: float = Z95) -> tuple[float, float]:
    """Newcombe's method-10 interval for candidate − reference top-1 (fractions)."""
    a, b, c, d, n = counts.both, counts.only_candidate, counts.only_reference, counts.neither, counts.n
    if n == 0:
        return -1.0, 1.0
    p1, p2 = (a + b) / n, (a + c) / n  # candidate, reference
    l1, u1 = wilson_interval(a + b, n, z)
    l2, u2 = wilson_interval(a + c, n, z)
    denominator = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(denominator) if denominator > 0 else 0.0
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    delta = p1 - p2
    return max(-1.0, delta - below), min(1.0, delta + above)


def mcnemar_exact_p(only_candidate: int, only_reference: int) -> float:
    """Two-sided exact McNemar p-value: P(a split of the discordant pairs at least this uneven | p = ½).

    The binomial tail is summed in log space, so tens of thousands of discordant pairs stay finite.
    """
    m = only_candidate + only_reference
    if m == 0:
        return 1.0
    k = min(only_candidate, only_reference)
    log_half = m * math.log(0.5)
    terms = [_log_comb(m, i) + log_half for i in range(k + 1)]
    top = max(terms)
    tail = math.exp(top) * math.fsum(math.exp(t - top) for t in terms)
    return min(1.0, 2.0 * tail)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def significance_note(p: float | None) -> str:
    """'' when the difference is significant at 5 %, else 'not significant'."""
    if p is None or p != p:
        return ""
    return "" if p < SIGNIFICANCE else "not significant"
