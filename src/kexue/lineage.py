"""Where a registered model came from, through the MLflow API alone: from
`models:/<name>@champion` to its version, the export, evaluate and train runs that made it
(the version's tags), the datasets each run logged and the code it ran.

    python -m kexue.lineage crf     # the name params.yaml registers crf by (crf.registered_name)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime

from kexue import models, registry, tracking
from kexue.cli import registered_name
from kexue.errors import KexueError

STAGES = ("export", "evaluate", "train")  # from the version back to the data
CONTEXT_TAG = "mlflow.data.context"  # the input tag `mlflow.log_input(context=...)` sets
CODE_TAGS = ("git.commit", tracking.PARAMS_TAG, tracking.EXP_NAME_TAG, tracking.EXP_BASELINE_TAG)


@dataclass(frozen=True)
class DatasetInput:
    context: str
    name: str
    source: str  # the path relative to the project
    digest: str
    sha256: str | None
    rows: int | None


@dataclass(frozen=True)
class RunLineage:
    stage: str
    run_id: str  # "unknown" when the version names no run of this stage
    found: bool  # the run is in the store
    run_name: str = ""
    status: str = ""
    start_time: int = 0  # milliseconds since the epoch
    tags: dict[str, str] | None = None
    datasets: tuple[DatasetInput, ...] = ()


@dataclass(frozen=True)
class Lineage:
    name: str
    version: str
    tags: dict[str, str]
    runs: tuple[RunLineage, ...]  # export, evaluate, train

    def run(self, stage: str) -> RunLineage:
        return next(run for run in self.runs if run.stage == stage)


def walk(name: str) -> Lineage:
    """The lineage of the champion version of registered model `name`."""
    mlflow = tracking.connect()
    client = mlflow.MlflowClient()
    with tracking.store(f"reading the lineage of {name}"):
        found = client.search_registered_models(filter_string=f"name = '{name}'")
        champion = found[0].aliases.get(registry.CHAMPION) if found else None
        if champion is None:
            raise KexueError(
                f"{registry.champion_uri(name)}: no such version in the MLflow store "
                f"{tracking.tracking_uri()} (run `dvc repro` first)"
            )
        version = client.get_model_version(name, champion)
        # A version registered before its tags named its runs still knows its export run.
        run_ids = {stage: version.tags.get(tag) for stage, tag in tracking.RUN_ID_TAGS.items()}
        run_ids["export"] = run_ids["export"] or version.run_id
        runs = tuple(_run(client, stage, run_ids[stage] or tracking.UNKNOWN) for stage in STAGES)
    return Lineage(name, str(version.version), dict(version.tags), runs)


def _run(client, stage: str, run_id: str) -> RunLineage:
    import mlflow

    if run_id == tracking.UNKNOWN:
        return RunLineage(stage, run_id, found=False)
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return RunLineage(stage, run_id, found=False)
        raise
    return RunLineage(
        stage,
        run_id,
        found=True,
        run_name=run.info.run_name,
        status=run.info.status,
        start_time=run.info.start_time,
        tags=dict(run.data.tags),
        datasets=tuple(_dataset(logged) for logged in run.inputs.dataset_inputs),
    )


def _dataset(logged) -> DatasetInput:
    dataset = logged.dataset
    context = next((tag.value for tag in logged.tags if tag.key == CONTEXT_TAG), "")
    source = json.loads(dataset.source) if dataset.source else {}
    profile = json.loads(dataset.profile) if dataset.profile else {}
    return DatasetInput(
        context=context,
        name=dataset.name,
        source=source.get("uri", dataset.source) if isinstance(source, dict) else dataset.source,
        digest=dataset.digest,
        sha256=profile.get("sha256"),
        rows=profile.get("num_rows"),
    )


def describe(lineage: Lineage) -> str:
    """The lineage as a few lines of text, from the version back to the data; a run's code
    tags where they differ from the version's (a model DVC restored from its run cache)."""
    lines = [f"{lineage.name} version {lineage.version} (@{registry.CHAMPION})"]
    lines += [f"  {tag}: {lineage.tags[tag]}" for tag in CODE_TAGS if tag in lineage.tags]
    sources = json.loads(lineage.tags.get(tracking.SOURCES_TAG, "{}"))
    lines += [f"  made from {source}  sha256 {digest}" for source, digest in sources.items()]
    for run in lineage.runs:
        lines.append(f"{run.stage} run {run.run_id}{_run_summary(run)}")
        for tag in CODE_TAGS:
            if run.tags and tag in run.tags and run.tags[tag] != lineage.tags.get(tag):
                lines.append(f"  {tag}: {run.tags[tag]}")
        for dataset in run.datasets:
            rows = f"{dataset.rows:,} rows" if dataset.rows is not None else ""
            lines.append(
                f"  {dataset.context:<11} {rows:>13}  {dataset.source}  "
                f"sha256 {dataset.sha256 or dataset.digest}"
            )
    return "\n".join(lines)


def _run_summary(run: RunLineage) -> str:
    if run.run_id == tracking.UNKNOWN:
        return ": no run in the store wrote the files it was made from"
    if not run.found:
        return ": not in the store (deleted)"
    started = datetime.fromtimestamp(run.start_time / 1000, tz=UTC)
    return f" ({run.run_name}, {run.status}, started {started:%Y-%m-%d %H:%M} UTC)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kexue.lineage", description=__doc__)
    parser.add_argument("model", choices=models.MODELS)
    args = parser.parse_args(argv)
    try:
        print(describe(walk(registered_name(args.model))))
    except KexueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
