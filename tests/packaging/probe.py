"""Run one service's code with only its declared dependencies importable (`python -m
tests.packaging.probe SERVICE ALLOWED_JSON WORKDIR`): an import hook refuses every module that
belongs to an installed distribution outside the service's closure (what its image installs), then
the service is built and exercised as it runs: its modules imported, its app created from default
settings, every spec of `models/` checked with the algorithms it builds, and the work that needs an
optional library done once (inference scores with onnxruntime, training fits and converts, the
monitor runs a River detector). Exit 0, or the refused import's traceback."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.metadata
import json
import os
import pkgutil
import sys
from pathlib import Path

WORKSPACE = ("driftloop", "tests")


class Closure(importlib.abc.MetaPathFinder):
    """Refuses a top-level module of an installed distribution the service does not declare, and
    another service's package (the workspace's are installed editable: not in the map below)."""

    def __init__(self, allowed: set[str], service: str) -> None:
        owners = importlib.metadata.packages_distributions()
        self.refused = {
            top
            for top, dists in owners.items()
            if not top.startswith(WORKSPACE) and not {d.lower().replace("_", "-") for d in dists} & allowed
        }
        self.own = f"driftloop_{service}"

    def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
        top = name.partition(".")[0]
        if top.startswith("driftloop_") and top != self.own:
            raise ModuleNotFoundError(f"{name} is another service's package", name=name)
        if top in self.refused:
            raise ModuleNotFoundError(f"{name} is outside the service's declared dependencies", name=name)
        return None


def apply_specs() -> None:
    """The `cli` image's job (the compose one-shot, the Helm Job): `driftloop apply` checks every
    spec, building each algorithm it names, and gets as far as the broker (there is none)."""
    import contextlib
    import io

    from driftloop.cli import main as cli

    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        code = cli(["apply", "models", "--bootstrap", "127.0.0.1:9"])
    assert code == 2 and "cannot reach the Kafka broker" in said.getvalue(), said.getvalue()


def exercise(service: str, work: Path) -> None:
    from driftloop.settings import service_settings
    from driftloop.spec import read_specs

    package = importlib.import_module(f"driftloop_{service}")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"driftloop_{service}.{module.name}")
    app = importlib.import_module(f"driftloop_{service}.app")
    os.environ.update({
        "DRIFTLOOP_DATA_DIR": str(work / "data"), "DRIFTLOOP_OFFLINE_DIR": str(work / "offline"),
        "DRIFTLOOP_TRAINING_DIR": str(work / "training"), "DRIFTLOOP_OBJECT_STORE_URL": str(work / "objects"),
    })  # fmt: skip
    app.create_app(service_settings(service)())
    builds = {"monitor": {"detectors"}, "training": {"estimators"}}.get(service, set())
    catalog = read_specs(Path("models"), build=frozenset(builds))
    assert catalog.specs and not catalog.refused, catalog.refused
    spec = catalog.specs["sea"]
    if service == "inference":
        import numpy as np

        from driftloop.artifacts import OnnxClassifier

        model = OnnxClassifier((work / "model.onnx").read_bytes(), [0, 1], ["a", "b", "c"])
        assert model.predict_proba(np.zeros((2, 3), dtype=np.float32)).shape == (2, 2)
    if service == "training":
        import numpy as np

        from driftloop.fitting import train_candidate
        from driftloop_training.adapters import convert

        X = np.random.default_rng(0).normal(size=(200, 3))
        candidate = train_candidate(spec, X, [int(x > 0) for x in X[:, 0]])
        assert convert(candidate.estimator, 3)
    if service == "monitor":
        from driftloop.algorithms import DETECTORS

        detector = DETECTORS[spec.drift.detector]()
        for error in [0] * 50 + [1] * 50:
            detector.update(error)


def main() -> None:
    service, allowed, work = sys.argv[1], json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[3])
    sys.meta_path.insert(0, Closure(set(allowed), service))
    if service == "guard-check":  # the hook refuses: scikit-learn is outside the registry's closure
        try:
            import sklearn  # noqa: F401
        except ModuleNotFoundError as exc:
            print(exc)
            sys.exit(3)
        sys.exit(0)
    if service == "cli":
        apply_specs()
    else:
        exercise(service, work)


if __name__ == "__main__":
    main()
