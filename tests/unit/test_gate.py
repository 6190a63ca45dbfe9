import pytest

from driftloop_registry.domain import gate
from tests.helpers import model_trained


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
