"""`make bench-learning-live`: the live loop against its backtest. A real stream is played through
the whole local stack (broker, Redis, six services) as an application would (requests, then each
label once `DELAY_ROWS` more rows were sent), under the model spec's own retraining policy; the
same rows, delay and spec are backtested in the same run. The goal: live prequential accuracy
within 1 point of the backtest's.

Usage: python -m bench.learning_live [STREAM] [RATE_PER_S]   (default: weather at 100 rows/s)
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import table, write

ROOT = Path(__file__).resolve().parents[1]
DELAY_ROWS = 1


def main() -> int:
    from threadpoolctl import threadpool_limits

    from driftloop import backtesting, live, localstack, streams
    from driftloop.backtest import Backtest, Delay
    from driftloop.spec import read_specs

    name = sys.argv[1] if len(sys.argv) > 1 else "weather"
    rate = float(sys.argv[2]) if len(sys.argv) > 2 else 100.0
    stream = streams.stream(name)
    spec = read_specs(ROOT / "models").specs[stream.spec]
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    rows = [(x, y, epoch + timedelta(seconds=t)) for x, y, t in stream.rows]
    history, _ = backtesting.encode(spec, rows, stream.drifts)
    initial = min(spec.retrain.window_rows, len(history) // 4)

    t0 = time.perf_counter()
    with threadpool_limits(limits=1):
        backtest = Backtest(spec, history, Delay(rows=DELAY_ROWS), initial, name="spec").run()
    backtest_s = time.perf_counter() - t0
    print(f"backtest: accuracy {backtest.accuracy:.4f}, {backtest.retrains} retrains", flush=True)

    def progress(sent: int, answered: int) -> None:
        print(f"\r  sent {sent:>6}/{len(rows)}  answered {answered:>6}", end="", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        stack = localstack.up(Path(tmp) / "run", ROOT / "models")
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
        "policy": spec.retrain.model_dump(),
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
