"""The drop of a quantized model with its exact interval from paired outcomes, and what a set can decide."""
import numpy as np
import pytest

from cmtnet.deploy.drop_check import PairedOutcomes, decide


def test_one_flip_in_sixty_images_cannot_decide_a_one_point_tolerance():
    outcomes = PairedOutcomes(count=60, lost=1, gained=0)
    assert outcomes.drop == pytest.approx(100 / 60)
    low, high = outcomes.interval()
    assert low < 0 < 1 < outcomes.drop < high  # no loss at all is still possible, so is a large one
    assert decide(outcomes, max_drop=1) == 'undecided'
    assert decide(outcomes, max_drop=1, strict=True) == 'beyond'
    needed = outcomes.images_needed(1.0)
    assert needed > 60
    # at the same rates, that many images give an interval no wider than a point, a tenth fewer do not
    for count, narrow in ((needed, True), (int(needed * 0.9), False)):
        low, high = outcomes.scaled(count).interval()
        assert (high - low <= 1) == narrow, count


def test_no_disagreement_still_leaves_an_interval_that_shrinks_with_the_set():
    widths = []
    for count in (60, 600, 6000):
        low, high = PairedOutcomes(count, 0, 0).interval()
        assert low == pytest.approx(-high) and high > 0
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    # zero flips in n images: the exact upper bound on the flip rate, at an error of 1.25% (half of 2.5% in
    # each of two tails), is -ln(0.0125) / n, as the rule of three is -ln(0.05) / n at 5%
    assert widths[2] / 2 == pytest.approx(-100 * np.log(0.0125) / 6000, rel=0.01)


@pytest.mark.parametrize('counts, max_drop, verdict', [
    ((1000, 100, 0), 1.0, 'beyond'),     # ten points lost: the whole interval is above a point
    ((20000, 20, 20), 1.0, 'within'),    # as many lost as gained, on a large set
    ((1000, 30, 5), 1.0, 'undecided'),
])
def test_decide_refuses_only_an_interval_wholly_above_the_tolerance(counts, max_drop, verdict):
    outcomes = PairedOutcomes(*counts)
    low, high = outcomes.interval()
    assert decide(outcomes, max_drop) == verdict
    assert verdict != 'beyond' or low > max_drop
    assert verdict != 'within' or high <= max_drop


def test_gains_give_a_negative_drop_mirroring_the_losses():
    lost, gained = PairedOutcomes(500, 12, 3), PairedOutcomes(500, 3, 12)
    assert lost.drop == -gained.drop == pytest.approx(1.8)
    assert lost.interval() == pytest.approx(tuple(-b for b in reversed(gained.interval())))


def test_the_interval_covers_the_true_drop_at_least_as_often_as_it_says():
    rng = np.random.default_rng(0)
    count, rates = 200, (0.04, 0.01, 0.95)  # lost, gained, the same outcome
    true_drop = 100 * (rates[0] - rates[1])
    draws = rng.multinomial(count, rates, size=300)
    intervals = {}
    for lost, gained, _ in draws:
        if (lost, gained) not in intervals:
            intervals[lost, gained] = PairedOutcomes(count, int(lost), int(gained)).interval()
    covered = np.mean([intervals[a, b][0] <= true_drop <= intervals[a, b][1] for a, b, _ in draws])
    assert covered >= 0.95


@pytest.mark.parametrize('counts', [(0, 0, 0), (10, 6, 5), (10, -1, 0)])
def test_impossible_counts_are_refused(counts):
    with pytest.raises(ValueError, match='paired outcomes'):
        PairedOutcomes(*counts)
