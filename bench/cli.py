"""`make bench-cli`: how fast `driftloop --help` (and a few subcommand helps) start, each in a fresh
process, several runs: wall and CPU time (user + system of the child), median and max. The same-run
ceiling is `python -c pass` in the same venv: the interpreter's own start-up, which no command can
beat; the difference is what the CLI's imports and parser cost.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.common import p50, table, write

RUNS = 15
DRIFTLOOP = str(Path(sys.executable).parent / "driftloop")
COMMANDS: dict[str, list[str]] = {
    "python -c pass (ceiling)": [sys.executable, "-c", "pass"],
    "driftloop --help": [DRIFTLOOP, "--help"],
    "driftloop replay --help": [DRIFTLOOP, "replay", "--help"],
    "driftloop models tag --help": [DRIFTLOOP, "models", "tag", "--help"],
    "driftloop predict --help": [DRIFTLOOP, "predict", "--help"],
}
TARGET_WALL_S = 0.25  # "well under a second", with room for a slower machine


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def once(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one fresh process running `argv` to its end."""
    cpu = _children_cpu()
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started, _children_cpu() - cpu


def measure(argv: list[str], runs: int = RUNS) -> dict[str, float]:
    """Median and max of wall and CPU time over `runs` runs, after one unmeasured warm-up run."""
    once(argv)
    walls, cpus = zip(*(once(argv) for _ in range(runs)), strict=True)
    return {
        "wall_p50_s": round(p50(list(walls)), 4),
        "wall_max_s": round(max(walls), 4),
        "cpu_p50_s": round(p50(list(cpus)), 4),
        "cpu_max_s": round(max(cpus), 4),
    }


def main() -> None:
    figures = {name: measure(argv) for name, argv in COMMANDS.items()}
    ceiling = figures["python -c pass (ceiling)"]
    worst = max(f["wall_max_s"] for name, f in figures.items() if name.startswith("driftloop"))
    result = {
        "runs": RUNS,
        "commands": figures,
        "help_wall_p50_over_ceiling_s": round(
            figures["driftloop --help"]["wall_p50_s"] - ceiling["wall_p50_s"], 4
        ),
        "worst_help_wall_max_s": worst,
        "target_wall_s": TARGET_WALL_S,
        "within_target": worst <= TARGET_WALL_S,
        "bytecode_cache": not (sys.dont_write_bytecode or os.environ.get("PYTHONDONTWRITEBYTECODE")),
    }
    rows: list[tuple[str, object]] = [
        (f"{name}  wall p50 / max, CPU p50 / max (ms)",
         f"{f['wall_p50_s'] * 1e3:7.1f} / {f['wall_max_s'] * 1e3:7.1f}, "
         f"{f['cpu_p50_s'] * 1e3:7.1f} / {f['cpu_max_s'] * 1e3:7.1f}")
        for name, f in figures.items()
    ]  # fmt: skip
    rows += [
        (
            "driftloop --help over the ceiling, wall p50 (ms)",
            f"{result['help_wall_p50_over_ceiling_s'] * 1e3:.1f}",
        ),
        ("worst wall max of a help (ms)", f"{worst * 1e3:.1f}"),
        ("target (ms)", f"<= {TARGET_WALL_S * 1e3:.0f}: {'met' if result['within_target'] else 'MISSED'}"),
        ("bytecode cache (.pyc)", "on" if result["bytecode_cache"] else "off (PYTHONDONTWRITEBYTECODE)"),
    ]
    print(table(f"bench-cli: start-up of the CLI's help, fresh processes, {RUNS} runs each", rows))
    print(f"\nwrote {write('cli', result)}")


if __name__ == "__main__":
    main()
