"""Training use cases: keep the training store, follow champions, train candidates on command."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np
from aiokafka import ConsumerRecord
from prometheus_client import Counter, Histogram
from pydantic import ValidationError
from threadpoolctl import threadpool_limits

from driftloop import fitting as domain
from driftloop.artifacts import ArtifactIntegrityError, ArtifactStore, OnnxClassifier
from driftloop.contracts import (
    DatasetRef,
    FeatureRow,
    Label,
    LifecycleEvent,
    ModelPromoted,
    ModelRolledBack,
    ModelTrained,
    ModelTrainingDeferred,
    ModelTrainingFailed,
    TrainModel,
    parse,
)
from driftloop.explain import input_columns, permutation_importance
from driftloop.fastpath import Handled, Outbox
from driftloop.faults import describe, is_transient
from driftloop.features import FeatureSet
from driftloop.kafka import triage
from driftloop.profile import profile
from driftloop.runtime import code_version
from driftloop.settings import Topics
from driftloop.spec import ModelSpec
from driftloop.specbook import Derived, version_of
from driftloop.store import RowStore
from driftloop_training.adapters import DatasetCatalog, convert

SERVICE = "training"
REMEMBERED = 1_024  # outcomes kept by command id: a command sent again is answered, not trained again
log = logging.getLogger(__name__)

RUNS = Counter(
    "driftloop_training_runs_total",
    "Training commands by model and outcome (trained, coalesced, insufficient_data, failed).",
    ["model", "outcome"],
)
RUN_SECONDS = Histogram(
    "driftloop_training_duration_seconds",
    "Seconds from command to ModelTrained, by model.",
    ["model"],
    buckets=(0.5, 1, 2, 5, 10, 20, 60, 120, 300),
)


@dataclass(frozen=True)
class Champion:
    version: int
    event: ModelPromoted | ModelRolledBack


@dataclass(frozen=True)
class Fitted:
    """A candidate (`fitting.train_candidate`: its holdout probabilities are the gate's evidence)
    and what serves: the ONNX conversion of it, or of its refit on the holdout too; the served
    model's probabilities on the holdout, from scikit-learn and from ONNX (the parity check)."""

    classes: list[Label]  # the served model's, in probability-column order
    cut: int  # the first holdout row
    evidence: np.ndarray  # the candidate's probabilities on the holdout (columns in `classes` order)
    onnx: bytes
    proba_sklearn: np.ndarray
    proba_onnx: np.ndarray
    params: dict[str, object]
    importance: dict[str, float]  # the served model's, on the holdout (`driftloop.explain`)
    fit_s: float
    convert_s: float
    explain_s: float


@dataclass(frozen=True)
class Window:
    since: datetime | None
    until: datetime | None
    last_n: int
    max_seq: int
    sha256: str | None  # set when re-reading a stored dataset version


@dataclass(frozen=True)
class Outcome:
    """What a command came to: a candidate, or why not (`outcome` names it)."""

    outcome: str  # trained, insufficient_data, failed, ...
    trained: ModelTrained | None = None
    detail: str = ""
    seconds: float = 0.0
    counted: bool = False  # its metrics were applied (its batch committed)


Notify = Callable[[LifecycleEvent], Awaitable[None]]


async def _nobody(event: LifecycleEvent) -> None:
    return None


class TrainingFailed(RuntimeError):
    """A command that cannot produce a candidate; `outcome` names why."""

    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome


class Trainer:
    def __init__(
        self,
        specs: Mapping[str, ModelSpec],
        store: RowStore,
        artifacts: ArtifactStore,
        datasets: DatasetCatalog,
        topics: Topics,
        threads: int = 1,
        notify: Notify = _nobody,
    ) -> None:
        self.threads = threads
        self.specs = specs
        self.datasets = datasets
        self.feature_sets = Derived(specs, FeatureSet)  # made again when a spec changes
        self.store = store
        self.artifacts = artifacts
        self.topics = topics
        self.notify = notify  # progress (waiting for rows) as it happens, before the batch's outputs
        self.champions: dict[str, Champion] = {}
        self.outcomes: dict[str, Outcome] = {}  # by command id: the newest REMEMBERED

    # ------------------------------------------------------------------ training store

    async def store_rows(self, records: Sequence[ConsumerRecord]) -> Handled:
        """Append labelled feature rows to the training store (idempotent by event id), once the
        batch's dead letters are out."""
        self.store.ensure_space()  # a full disk stops the batch before its dead letters go out
        parsed, dead = triage(SERVICE, records, lambda r: (parse(FeatureRow, r.value, self.specs), r.value))
        by_model: dict[str, list[tuple[str, datetime, bytes]]] = {}
        for row, body in parsed:
            if row.label is not None and body is not None:
                by_model.setdefault(row.model, []).append((row.event_id, row.event_time, body))
        out = Outbox(self.topics.events_dlq)
        out.dead_letters(dead)
        out.count(self.topics.features_computed, "unlabelled", len(parsed) - sum(map(len, by_model.values())))

        def store() -> None:
            for model, rows in by_model.items():
                self.store.append(model, rows)

        return out.handled(then=store)

    # ------------------------------------------------------------------ champions

    async def on_lifecycle(self, event: LifecycleEvent) -> None:
        if isinstance(event, ModelPromoted | ModelRolledBack):
            self.champions[event.model] = Champion(event.version, event)

    # ------------------------------------------------------------------ commands

    async def handle_commands(self, records: Sequence[ConsumerRecord]) -> Handled:
        """Train each model at most once per batch: later commands for a model coalesce. A
        candidate goes to `models.trained`; a command that made none, `ModelTrainingFailed` to
        `models.lifecycle`. A command handled again (a retried batch, or the command sent again) is
        not trained again: its outcome is sent again, and counted once."""
        commands, dead = triage(SERVICE, records, lambda r: parse(TrainModel, r.value, self.specs))
        out = Outbox(self.topics.events_dlq)
        out.dead_letters(dead)
        latest: dict[str, TrainModel] = {}
        for command in commands:
            if command.model in latest:  # the later one trains for both: say so to the earlier
                earlier = latest[command.model]
                out.tally.inc(RUNS.labels(command.model, "coalesced"))
                out.publish(self.topics.models_lifecycle, [ModelTrainingFailed(
                    model=command.model, version=0, command_id=earlier.command_id, outcome="coalesced",
                    reason=f"coalesced: {command.command_id} trains instead",
                )])  # fmt: skip
            latest[command.model] = command
        for command in latest.values():
            known = self.outcomes.get(command.command_id)
            outcome = known or await self.run(command)
            self.outcomes[command.command_id] = outcome
            while len(self.outcomes) > REMEMBERED:
                del self.outcomes[next(iter(self.outcomes))]
            if not outcome.counted:
                out.tally.inc(RUNS.labels(command.model, outcome.outcome))
                if outcome.trained is not None:
                    out.tally.observe(RUN_SECONDS.labels(command.model), outcome.seconds)
            if outcome.trained is not None:
                out.publish(self.topics.models_trained, [outcome.trained])
            else:
                failed = ModelTrainingFailed(
                    model=command.model,
                    version=0,
                    reason=f"{outcome.outcome}: {outcome.detail}",
                    command_id=command.command_id,
                    outcome=outcome.outcome,
                )
                out.publish(self.topics.models_lifecycle, [failed])
        done = [c.command_id for c in latest.values()]

        def counted() -> None:
            for command_id in done:
                if command_id in self.outcomes:
                    self.outcomes[command_id] = replace(self.outcomes[command_id], counted=True)

        return out.handled(committed=counted)

    async def run(self, command: TrainModel) -> Outcome:
        """Train a candidate for a command, or say why not. The run keeps the spec in force when
        it starts (and its version) to the end, whatever is applied meanwhile."""
        spec, version = self.specs.get(command.model), version_of(self.specs, command.model)
        if spec is None:  # retired since the command was read
            return Outcome("failed", detail=f"no spec of {command.model!r} is in force")
        started = time.perf_counter()
        try:
            trained = await self._train(spec, command, version)
        except TrainingFailed as exc:
            log.warning("training %s for %s failed: %s", command.command_id, command.model, exc)
            return Outcome(exc.outcome, detail=str(exc))
        except Exception as exc:  # a bug on this command's data: reported, not trained again
            if is_transient(exc):
                raise
            log.exception("training %s for %s failed", command.command_id, command.model)
            return Outcome("failed", detail=describe(exc, 500))
        return Outcome("trained", trained, seconds=time.perf_counter() - started)

    async def _wait_for_rows(self, spec: ModelSpec, command: TrainModel) -> None:
        wanted = max(command.min_rows or 0, spec.training.min_rows)
        deadline = time.monotonic() + spec.training.wait_for_rows_s
        have = self.store.count(spec.name, command.since, command.until)
        if have < wanted:
            await self._tell(
                ModelTrainingDeferred(
                    model=spec.name,
                    version=0,
                    reason=f"waiting for rows: {have} of {wanted}",
                    command_id=command.command_id,
                    rows=have,
                    rows_needed=wanted,
                    wait_s=spec.training.wait_for_rows_s,
                )
            )
        while (have := self.store.count(spec.name, command.since, command.until)) < wanted:
            if time.monotonic() >= deadline:
                raise TrainingFailed("insufficient_data", f"{have} rows, {wanted} needed")
            await asyncio.sleep(0.25)

    async def _tell(self, event: LifecycleEvent) -> None:
        try:
            await self.notify(event)
        except Exception:  # a progress notice: training goes on without it
            log.warning("could not announce %s", event.event, exc_info=True)

    async def _window(self, spec: ModelSpec, command: TrainModel) -> Window:
        """The rows to read: a stored dataset version, or the command's window as of now."""
        if command.dataset_version:
            stored = self.datasets.load(spec.name, command.dataset_version)
            if stored is None:
                raise TrainingFailed("unknown_dataset", f"no dataset version {command.dataset_version!r}")
            return Window(stored.since, stored.until, stored.last_n, stored.max_seq, stored.sha256)
        await self._wait_for_rows(spec, command)
        last_n = min(command.last_n or spec.training.window_rows, spec.training.window_rows)
        return Window(command.since, command.until, last_n, self.store.max_seq(spec.name), None)

    def _load(self, spec: ModelSpec, window: Window) -> tuple[list[FeatureRow], np.ndarray]:
        feature_set = self.feature_sets.of(spec)
        rows: list[FeatureRow] = []
        bodies = self.store.window(spec.name, window.since, window.until, window.last_n, window.max_seq)
        for body in bodies:
            try:
                row = FeatureRow.model_validate_json(body)
            except ValidationError:
                continue
            if row.label is not None and all(n in row.features for n in feature_set.names):
                rows.append(row)
        return rows, feature_set.from_named(r.features for r in rows)

    def _fit(self, spec: ModelSpec, X: np.ndarray, y: list[Label]) -> Fitted:
        t0 = time.perf_counter()
        with threadpool_limits(limits=self.threads):  # spinning OpenMP threads starve the services
            candidate = domain.train_candidate(spec, X, y)
            served = candidate.estimator
            if spec.training.refit_with_holdout:
                served = domain.refit(spec, candidate, X, y)
        t1 = time.perf_counter()
        onnx = convert(served, X.shape[1])
        t2 = time.perf_counter()
        held, classes = X[candidate.cut :], domain.classes_of(served)
        names = self.feature_sets.of(spec).names
        onnx_model = OnnxClassifier(onnx, classes, names)
        proba_onnx = onnx_model.predict_proba(held)
        t3 = time.perf_counter()
        truth = np.array([[str(c) for c in classes].index(str(label)) for label in y[candidate.cut :]])
        importance = permutation_importance(onnx_model.predict_proba, held, truth, input_columns(spec, names))
        t4 = time.perf_counter()
        refit = {"refit_with_holdout": True} if spec.training.refit_with_holdout else {}
        return Fitted(
            classes=classes,
            cut=candidate.cut,
            evidence=domain.align_columns(candidate.proba, candidate.classes, classes),
            onnx=onnx,
            proba_sklearn=served.predict_proba(held),
            proba_onnx=proba_onnx,
            params={k: v for k, v in served.get_params().items() if _plain(v)} | candidate.params | refit,
            importance=importance,
            fit_s=t1 - t0,
            convert_s=t2 - t1,
            explain_s=t4 - t3,
        )

    async def _champion_at_hand(self, spec: ModelSpec) -> None:
        """Fetch the champion's artifact into the cache (`Unavailable` while the store is down)."""
        champion = self.champions.get(spec.name)
        if champion is not None:
            with contextlib.suppress(ArtifactIntegrityError):  # `_champion_proba` says why
                await self.artifacts.get(champion.event.artifact)

    async def _champion_proba(
        self, spec: ModelSpec, X_holdout: np.ndarray, classes: list[Label]
    ) -> tuple[int | None, np.ndarray | None]:
        """The champion's probabilities on the holdout (columns in `classes` order), if it can give them."""
        champion = self.champions.get(spec.name)
        if champion is None:
            return None, None
        event = champion.event
        if event.feature_names != self.feature_sets.of(spec).names:
            log.info("champion v%s has other features; not compared", champion.version)
            return champion.version, None
        try:
            model = OnnxClassifier(
                await self.artifacts.get(event.artifact), event.classes, event.feature_names
            )
        except Exception as exc:  # a broken champion must not block training; an unreachable store
            if is_transient(exc):  # does not break it: the command is retried
                raise
            log.warning("champion v%s unusable for evaluation: %s", champion.version, exc)
            return champion.version, None
        return champion.version, domain.align_columns(model.predict_proba(X_holdout), event.classes, classes)

    async def _train(self, spec: ModelSpec, command: TrainModel, version: str | None) -> ModelTrained:
        window = await self._window(spec, command)
        rows, X = await asyncio.to_thread(self._load, spec, window)
        digest = domain.dataset_hash(rows)
        if window.sha256 is not None and digest != window.sha256:
            raise TrainingFailed("dataset_mismatch", f"dataset {command.dataset_version} re-read differently")
        if len(rows) < spec.training.min_rows:
            raise TrainingFailed("insufficient_data", f"{len(rows)} usable rows")
        y = [r.label for r in rows if r.label is not None]
        cut = domain.holdout_start(len(rows), spec.training.holdout_fraction, spec.gate.min_holdout_rows)
        if len(set(map(str, y[:cut]))) < 2:
            raise TrainingFailed("insufficient_data", "fewer than two classes in the training rows")
        await self._champion_at_hand(spec)  # an unreachable store fails the run before the fit
        try:
            fitted = await asyncio.to_thread(self._fit, spec, X, y)
        except Exception as exc:
            raise TrainingFailed("failed", f"fit or conversion failed: {exc}") from exc
        t0 = time.perf_counter()
        champion_version, champion_proba = await self._champion_proba(spec, X[cut:], fitted.classes)
        seen_until = self.champions[spec.name].event.data_until if champion_proba is not None else None
        unseen = None if seen_until is None else np.array([r.event_time > seen_until for r in rows[cut:]])
        candidate, champion, comparison = domain.evaluate(
            spec.gate.metric, y[cut:], fitted.evidence, champion_proba, fitted.classes, unseen
        )
        evaluate_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        serving = self.champions.get(spec.name)  # shifts from its training data
        same_columns = serving is not None and serving.event.feature_names == self.feature_sets.of(spec).names
        reference = serving.event.reference_stats if serving is not None and same_columns else None
        compared_with = serving.version if serving is not None else None
        described = await asyncio.to_thread(profile, spec, X, y, reference, compared_with)
        profile_s = time.perf_counter() - t0
        artifact = await self.artifacts.put(fitted.onnx)
        dataset = DatasetRef(
            version=digest[:16],
            since=window.since,
            until=window.until,
            last_n=window.last_n,
            max_seq=window.max_seq,
            rows=len(rows),
            train_rows=cut,
            holdout_rows=len(rows) - cut,
            first_event_time=rows[0].event_time,
            last_event_time=rows[-1].event_time,
            sha256=digest,
            files=self.store.manifest(spec.name, window.since, window.until, window.last_n, window.max_seq),
        )
        self.datasets.save(spec.name, dataset)
        return ModelTrained(
            spec_version=version,
            run_id=f"{spec.name}-{command.command_id}",
            command_id=command.command_id,
            reason=command.reason,
            model=spec.name,
            algorithm=spec.algorithm.name,
            params=fitted.params,
            classes=fitted.classes,
            feature_names=self.feature_sets.of(spec).names,
            artifact=artifact,
            metric=spec.gate.metric,
            candidate_metrics=candidate,
            champion_version=champion_version,
            champion_metrics=champion,
            comparison=comparison,
            parity_max_abs_diff=float(np.abs(fitted.proba_onnx - fitted.proba_sklearn).max()),
            dataset=dataset,
            reference_stats=domain.reference_stats(X[:cut], self.feature_sets.of(spec).names),
            prediction_shares=domain.prediction_shares(fitted.proba_onnx, fitted.classes),
            calibration=domain.calibration(fitted.evidence, fitted.classes, y[cut:]),
            importance=fitted.importance,
            profile=described,
            code_version=code_version(),
            durations_s={
                "fit": fitted.fit_s,
                "convert": fitted.convert_s,
                "evaluate": evaluate_s,
                "explain": fitted.explain_s,
                "profile": profile_s,
            },
        )


def _plain(value: object) -> bool:
    return value is None or isinstance(value, bool | int | float | str)
