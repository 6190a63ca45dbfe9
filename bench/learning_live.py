"""`make bench-learning-live`: the live loop against its backtest. The stream is first backtested
under the default grid (labels `DELAY_ROWS` rows late) and the recommended policy is written into a
copy of its spec; then the stream is played through the whole local stack (broker, Redis, six
services) under that spec as an application would (requests, then each label once `DELAY_ROWS`
more rows were sent). The goal: live prequential accuracy within 1 point of the recommended
policy's backtest figure.

Usage: python -m bench.learning_live [STREAM] [RATE_PER_S]   (default: weather at 30 rows/s)

A replay compresses the stream's time: at 30 rows/s an hourly stream runs 100,000 times faster than
it happened, and a retrain that takes two or three seconds end to end spans about a hundred rows.
Much faster, retrains that fall due while one trains coalesce, which a real stream never sees.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import table, write

ROOT = Path(__file__).resolve().parents[1]
DELAY_ROWS = 1


def with_changes(models: Path, into: Path, name: str, changes: dict[str, dict[str, Any]]) -> Path:
    """A copy of the `models` directory where spec `name` has the policy `changes`."""
    import yaml

    shutil.copytree(models, into)
    path = into / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    for section, fields in changes.items():
        data[section] = {**data.get(section, {}), **fields}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return into


def main() -> int:
    from threadpoolctl import threadpool_limits

    from driftloop import backtesting, live, localstack, streams
    from driftloop.backtest import Delay, policy_changes, recommend
    from driftloop.spec import read_specs

    name = sys.argv[1] if len(sys.argv) > 1 else "weather"
    rate = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
    stream = streams.stream(name)
    spec = read_specs(ROOT / "models").specs[stream.spec]
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    rows = [(x, y, epoch + timedelta(seconds=t)) for x, y, t in stream.rows]
    history, _ = backtesting.encode(spec, rows, stream.drifts)
    initial = min(spec.retrain.window_rows, len(history) // 4)

    t0 = time.perf_counter()
    with threadpool_limits(limits=1):
        backtest = recommend(backtesting.run(spec, history, Delay(rows=DELAY_ROWS), initial))
    backtest_s = time.perf_counter() - t0
    changes = policy_changes(backtest.spec, spec)
    print(f"backtest: recommended {backtest.name}, accuracy {backtest.accuracy:.4f}, "
          f"{backtest.retrains} retrains; in the spec: {changes}", flush=True)  # fmt: skip

    def progress(sent: int, answered: int) -> None:
        print(f"\r  sent {sent:>6}/{len(rows)}  answered {answered:>6}", end="", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        models = with_changes(ROOT / "models", Path(tmp) / "models", stream.spec, changes)
        stack = localstack.up(Path(tmp) / "run", models)
        try:
            run = asyncio.run(
                live.play(
                    stack.bootstrap,
                    spec.name,
                    rows,
                    initial,
                    DELAY_ROWS,
                    rate,
                    timeout_s=60 + 3 * len(rows) / rate,
                    progress=progress,
                )
            )
        finally:
            localstack.down(Path(tmp) / "run")
    print()
    gap = 100 * (run.accuracy - backtest.accuracy)
    figures = {
        "stream": name,
        "rows": len(rows),
        "initial_rows": initial,
        "label_delay_rows": DELAY_ROWS,
        "rate_per_s": rate,
        "policy": backtest.name,
        "policy_changes": changes,
        "backtest_accuracy": backtest.accuracy,
        "backtest_retrains": backtest.retrains,
        "backtest_promotions": backtest.promotions,
        "backtest_s": backtest_s,
        "live_accuracy": run.accuracy,
        "live_promotions": len(run.promotions) - 1,
        "live_commands": [command for _, command in run.promotions],
        "live_s": run.seconds,
        "gap_points": gap,
    }
    print(
        table(
            f"live loop vs backtest: {name}, {len(rows)} rows, labels {DELAY_ROWS} row late, {rate:g} rows/s",
            [
                ("recommended policy", backtest.name),
                ("backtest accuracy", backtest.accuracy),
                ("backtest promotions", backtest.promotions),
                ("live accuracy", run.accuracy),
                ("live promotions (after the first model)", len(run.promotions) - 1),
                ("gap, points (goal: within 1)", gap),
                ("live wall, s", run.seconds),
            ],
        )
    )
    print(f"wrote {write(f'learning_live_{name}', figures)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
