"""Decision thresholds chosen for a goal on validation scores."""

import numpy as np
import pytest

from imgclf.errors import ImgclfError
from imgclf.thresholds import ThresholdGoal, choose_threshold, parse_goal


def _scores(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.random(2000) < 0.2
    scores = np.clip(rng.normal(np.where(truth, 0.7, 0.35), 0.15), 0, 1)
    return scores, truth


@pytest.mark.parametrize("text, goal", [("f1", ThresholdGoal("f1")), ("precision=0.95", ThresholdGoal("precision", 0.95)),
                                        ("Recall=0.9", ThresholdGoal("recall", 0.9)), ("0.3", ThresholdGoal("fixed", 0.3))])
def test_goals_parse_as_written(text, goal):
    assert parse_goal(text) == goal
    assert parse_goal(str(goal)) == goal


@pytest.mark.parametrize("text", ["precision=1.5", "-0.1", "accuracy=0.9", "recall=", "high"])
def test_a_bad_goal_is_one_line_naming_the_option(text):
    with pytest.raises(ImgclfError, match=r"--threshold-for .*0\.\.1"):
        parse_goal(text)


def test_precision_goal_is_met_with_the_most_recall():
    scores, truth = _scores()
    choice = choose_threshold(scores, truth, parse_goal("precision=0.95"))
    assert choice.met and choice.precision >= 0.95
    lower = scores[scores < choice.threshold].max()  # the next threshold down no longer meets it
    assert choose_threshold(scores, truth, ThresholdGoal("fixed", lower)).precision < 0.95


def test_recall_goal_is_met_with_the_most_precision():
    scores, truth = _scores()
    choice = choose_threshold(scores, truth, parse_goal("recall=0.95"))
    assert choice.met and choice.recall >= 0.95
    higher = np.nextafter(scores[scores > choice.threshold].min(), 1.0)  # the next threshold up says one image less
    assert choose_threshold(scores, truth, ThresholdGoal("fixed", higher)).recall < 0.95


def test_f1_goal_beats_one_half_and_every_other_threshold():
    scores, truth = _scores()
    best = choose_threshold(scores, truth, parse_goal("f1"))
    for threshold in np.linspace(0.05, 0.95, 19):
        assert best.f1 >= choose_threshold(scores, truth, ThresholdGoal("fixed", threshold)).f1 - 1e-12


def test_an_unreachable_goal_says_so_and_one_class_keeps_one_half():
    scores, truth = _scores()
    scores[np.argmax(scores)], truth[np.argmax(scores)] = 1.0, False  # the most confident image is a negative
    unreachable = choose_threshold(scores, truth, parse_goal("precision=1.0"))
    assert not unreachable.met and unreachable.precision < 1.0
    flat = choose_threshold(scores, np.zeros_like(truth), parse_goal("f1"))
    assert flat.threshold == 0.5 and not flat.met


def test_the_threshold_sits_in_the_gap_below_the_lowest_yes():
    scores = np.array([0.1, 0.2, 0.6, 0.8, 0.9])
    truth = np.array([0, 0, 1, 1, 1])
    choice = choose_threshold(scores, truth, parse_goal("f1"))
    assert choice.threshold == pytest.approx(0.4) and choice.f1 == 1.0  # not 0.6: a positive at 0.55 is still a yes
