from datetime import UTC, datetime

import pytest

from driftloop.contracts import ArtifactRef, DatasetRef, ModelTrained
from driftloop_registry.domain import gate

T = datetime(2026, 1, 1, tzinfo=UTC)


def _trained(candidate, champion=None, parity=1e-6):
    return ModelTrained(
        run_id="r",
        command_id="c",
        reason="drift",
        model="sea",
        algorithm="logistic_regression",
        params={},
        classes=[0, 1],
        feature_names=["x0"],
        artifact=ArtifactRef(uri="u", sha256="0" * 64, size_bytes=1),
        metric="accuracy",
        candidate_metrics={"accuracy": candidate},
        champion_version=1 if champion is not None else None,
        champion_metrics={"accuracy": champion} if champion is not None else None,
        parity_max_abs_diff=parity,
        dataset=DatasetRef(
            rows=10, train_rows=8, holdout_rows=2, first_event_time=T, last_event_time=T, sha256="h"
        ),
        reference_stats={},
        code_version="0",
        durations_s={},
    )


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
