"""`make sizes`: the installed size of each image's dependency closure, from the lock.

A service's closure is what `uv export --package driftloop-<service> --no-dev` resolves from
`uv.lock` (the packages its image installs, for this platform and Python); each package's installed
size is the sum of the files its installed copy lists (its RECORD) in this environment, which has
them all. Not a benchmark of speed: a measure of what each image carries. Written to
`bench/results/sizes.json` with the largest packages of each closure.

Usage: python -m bench.sizes
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
from functools import cache
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

from bench.common import table, write
from driftloop.localstack import SERVICES

ROOT = Path(__file__).resolve().parents[1]
MB = 1e6


IMAGES = {**{s: (f"driftloop-{s}", ()) for s in SERVICES}, "cli": ("driftloop", ("learn", "detect"))}


def closure(package: str, extras: tuple[str, ...] = ()) -> list[str]:
    """The distributions `package` (with `extras`) installs on this platform, workspace members
    excluded: what its image installs (`infra/docker/Dockerfile`)."""
    exported = subprocess.run(
        ["uv", "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-workspace", "--package", package,
         *(f"--extra={extra}" for extra in extras)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    names = []
    for line in exported.splitlines():
        if not line or line[0] in "# ":
            continue
        requirement, _, marker = line.partition(";")
        if marker.strip() and not Marker(marker.strip()).evaluate():
            continue
        names.append(canonicalize_name(re.split(r"[=<>\[ ]", requirement, maxsplit=1)[0]))
    return names


@cache
def installed_size(name: str) -> int:
    """Bytes of the files the installed distribution lists (0 when it is not installed here)."""
    try:
        files = importlib.metadata.distribution(name).files or []
    except importlib.metadata.PackageNotFoundError:
        return 0
    return sum(f.size or 0 for f in files)


def main() -> None:
    figures: dict[str, dict[str, object]] = {}
    for service, (package, extras) in IMAGES.items():
        names = closure(package, extras)
        sizes = {name: installed_size(name) for name in names}
        largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:6]
        figures[service] = {
            "packages": len(names),
            "installed_mb": round(sum(sizes.values()) / MB, 1),
            "largest_mb": {name: round(size / MB, 1) for name, size in largest},
            "missing_here": sorted(n for n, s in sizes.items() if not s),
        }
    rows = [
        (service, f"{f['installed_mb']} MB, {f['packages']} packages; largest: "
                  + ", ".join(f"{n} {mb}" for n, mb in f["largest_mb"].items()))  # type: ignore[attr-defined]
        for service, f in figures.items()
    ]  # fmt: skip
    print(table("installed size of each service's dependency closure (uv.lock, this platform)", rows))
    print(f"\nwrote {write('sizes', figures)}")


if __name__ == "__main__":
    main()
