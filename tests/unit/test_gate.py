import pytest

from driftloop.gate import Evidence
from driftloop.gate import gate as decide
from tests.helpers import model_trained


def gate(spec, trained):
    return decide(spec, Evidence.of(trained))


def _trained(candidate, champion=None, parity=1e-6):
    return model_trained(accuracy=candidate, champion=champion, parity=parity)


@pytest.mark.parametrize(
    ("candidate", "champion", "parity", "blessed", "why"),
    [
        (0.85, None, 1e-6, True, "no champion"),
        (0.55, None, 1e-6, False, "floor"),
        (0.85, 0.80, 1e-6, True, "vs champion"),
        (0.795, 0.80, 1e-6, True, "vs champion"),
        (0.70, 0.80, 1e-6, False, "trails champion"),
        (0.90, 0.80, 5e-2, False, "parity"),
    ],
)
def test_gate(sea_spec, candidate, champion, parity, blessed, why):
    decision = gate(sea_spec, _trained(candidate, champion, parity))
    assert decision.blessed is blessed
    assert why in decision.reason


@pytest.mark.parametrize(
    ("candidate", "champion", "comparison", "blessed", "why"),
    [
        # the point estimates trail by 0.03, but the holdout cannot tell: newer rows win
        (0.77, 0.80, (-0.03, 0.02), True, "95% bound"),
        # confidently worse by more than max_regression (0.01)
        (0.70, 0.80, (-0.10, 0.02), False, "trails champion"),
        (0.85, 0.80, (0.05, 0.01), True, "vs champion"),
    ],
)
def test_paired_gate_rejects_only_what_the_holdout_shows_is_worse(
    sea_spec, candidate, champion, comparison, blessed, why
):
    trained = model_trained(accuracy=candidate, champion=champion, comparison=comparison)
    decision = gate(sea_spec, trained)
    assert decision.blessed is blessed, decision.reason
    assert why in decision.reason


def test_a_holdout_too_small_to_decide_is_rejected(sea_spec):
    trained = model_trained(accuracy=0.9, champion=0.8, holdout=120, comparison=(0.1, 0.02))
    decision = gate(sea_spec, trained)
    assert not decision.blessed
    assert "below min_holdout_rows (500)" in decision.reason
    # without a champion there is nothing to compare: a small holdout only has to clear the floor
    assert gate(sea_spec, model_trained(accuracy=0.9, holdout=120)).blessed
