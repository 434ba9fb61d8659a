"""How sure an accuracy check is: the top-1 drop of a quantized model from its float model, with an exact
interval from the paired outcomes, and whether a set of labelled images can decide a tolerance at all.

Both models see the same images, so only the images where their top-1 correctness differs tell them apart:
`lost` (the float model right, the other wrong) and `gained` (the reverse); the drop is
(lost - gained) / count. It is the product of the rate of such images, q = (lost + gained) / count, and of
2p - 1, p = lost / (lost + gained). The interval bounds q by Clopper-Pearson on count images and p by
Clopper-Pearson on the disagreeing images alone (the exact McNemar test's binomial), each at half the error
level, so that both hold together at the confidence asked (Bonferroni); the drop's bounds are the extremes
of q (2p - 1) over that box. It conditions on nothing that was observed: with no disagreement at all, the
interval still spans what so few images cannot rule out (one flip in 60 images is 1.67 points).
"""
from dataclasses import dataclass
from typing import Optional, Tuple


__all__ = ['CONFIDENCE', 'MAX_IMAGES', 'PairedOutcomes', 'decide']

CONFIDENCE = 0.95

# the largest set `images_needed` considers: beyond it, the answer is that no practical set decides
MAX_IMAGES = 10_000_000


def _exact(k: int, n: int, confidence: float) -> Tuple[float, float]:
    """The Clopper-Pearson interval of a proportion, k of n; (0, 1) for n = 0."""
    if n == 0:
        return 0., 1.
    from scipy.stats import binomtest  # here: importing scipy.stats installs warnings filters
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method='exact')
    return ci.low, ci.high


@dataclass(frozen=True)
class PairedOutcomes:
    """A float model and another model of it (int8, bf16) on the same `count` labelled images: `lost` images
    that the float model gets right and the other wrong, `gained` the reverse."""
    count: int
    lost: int
    gained: int

    def __post_init__(self) -> None:
        if self.count < 1 or self.lost < 0 or self.gained < 0 or self.lost + self.gained > self.count:
            raise ValueError(f'paired outcomes need 0 <= lost + gained <= count, count >= 1; got count '
                             f'{self.count}, lost {self.lost}, gained {self.gained}')

    @property
    def drop(self) -> float:
        """The top-1 drop in percentage points (negative: the other model is more accurate here)."""
        return 100 * (self.lost - self.gained) / self.count

    def interval(self, confidence: float = CONFIDENCE) -> Tuple[float, float]:
        """(low, high) of the drop in percentage points, holding with probability `confidence` at least."""
        split = 1 - (1 - confidence) / 2  # each of the two intervals at half the error level
        disagreeing = self.lost + self.gained
        q = _exact(disagreeing, self.count, split)
        p = _exact(self.lost, disagreeing, split)
        corners = [100 * a * (2 * b - 1) for a in q for b in p]
        return min(corners), max(corners)

    def scaled(self, count: int) -> 'PairedOutcomes':
        """The outcomes of `count` images at the same rates of lost and gained images."""
        lost, gained = round(self.lost * count / self.count), round(self.gained * count / self.count)
        return PairedOutcomes(count, lost, gained)

    def images_needed(self, width: float, confidence: float = CONFIDENCE) -> Optional[int]:
        """About how many images an interval no wider than `width` points takes at these rates of lost and
        gained images; None where no set of up to MAX_IMAGES does."""
        def narrow(n: int) -> bool:
            low, high = self.scaled(n).interval(confidence)
            return high - low <= width
        if narrow(self.count):
            return self.count
        low, high = self.count, 2 * self.count
        while not narrow(high):
            if high >= MAX_IMAGES:
                return None
            low, high = high, min(2 * high, MAX_IMAGES)
        while high - low > max(1, low // 100):  # to 1%: the rates are estimates anyway
            middle = (low + high) // 2
            low, high = (low, middle) if narrow(middle) else (middle, high)
        return high


def decide(outcomes: PairedOutcomes, max_drop: float, strict: bool = False,
           confidence: float = CONFIDENCE) -> str:
    """'within', 'undecided' or 'beyond' `max_drop` points. Without `strict`, 'beyond' only when the whole
    interval lies above `max_drop`, 'undecided' when it straddles it; with `strict`, the point estimate
    alone decides ('within' or 'beyond')."""
    if strict:
        return 'beyond' if outcomes.drop > max_drop else 'within'
    low, high = outcomes.interval(confidence)
    if low > max_drop:
        return 'beyond'
    return 'within' if high <= max_drop else 'undecided'
