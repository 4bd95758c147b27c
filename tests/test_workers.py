"""Two training workers on 127.0.0.1 train the crf stage as one MultiWorkerMirroredStrategy
job: the chief through `dvc repro train_crf`, the other worker through the stage's own
command. Both finish; only the chief writes the model, the curves and one MLflow run; its
loss is a single process's with the same global batch. Killed after an epoch, the job
resumes on both workers. The job's TF_CONFIG helpers are checked without training.

Dropout is off so that both runs compute the same function: the workers' dropout masks are
drawn per replica, not like one process's over the whole batch.
"""

import contextlib
import csv
import dataclasses
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import tiny_runtime
from dvc_project import ENV, TINY_CRF, make_project, run, set_params, stages_run

from kexue import params, training
from kexue.datasets import crf as crf_data
from kexue.errors import ParamsError
from kexue.models import crf
from kexue.servers import free_port, process_group

WORKERS = 2
PER_REPLICA_BATCH = 16  # params' batch_size is per replica: the job's global batch is 32
JOB_TIMEOUT_SECONDS = 300
POLL_SECONDS = 0.2
RESUMED_EPOCHS = 4
# The job takes a single process's steps: each worker computes its half of every global
# batch and the gradients are averaged. Measured here, the two final losses differ by 1e-7
# (float sums in another order); one process with the per-replica batch (16) ends 12% away.
LOSS_TOLERANCE = 1e-3


def final_loss(repo) -> float:
    with (repo / "plots" / "crf" / "train.csv").open(newline="") as file:
        return float(list(csv.DictReader(file))[-1]["loss"])


def train_command(repo) -> list[str]:
    """train_crf's own command, as dvc.yaml gives it to DVC."""
    return shlex.split(
        yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["train_crf"]["cmd"]
    )


def tf_config(ports: list[int], index: int) -> str:
    workers = [f"127.0.0.1:{port}" for port in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def workers_of_runs(repo) -> list[tuple[str, str]]:
    """(run name, its `workers` param) of every MLflow run, oldest first."""
    with sqlite3.connect(repo / "mlruns.db") as db:
        return db.execute(
            "select r.name, p.value from runs r join params p on p.run_uuid = r.run_uuid "
            "where p.key = 'workers' order by r.start_time"
        ).fetchall()


def wait_for_all(processes: list, timeout: float) -> list[int | None]:
    """Exit codes once every process ended or one failed (the others then wait forever)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        codes = [process.poll() for process in processes]
        if None not in codes or any(code for code in codes):
            return codes
        time.sleep(POLL_SECONDS)
    return [process.poll() for process in processes]


def prepare_here(repo) -> None:
    """Make prepare_crf's and vocab_crf's outputs in this process and record them in
    dvc.lock: two fewer processes that start TensorFlow."""
    config = params.parse(crf.Config, params.block(params.load(repo / "params.yaml"), "crf"), "crf")
    crf_data.prepare(config, [repo / config.corpus], repo / "data" / "prepared" / "crf")
    vocab = crf_data.build_vocab(config, repo / "data" / "prepared" / "crf")
    vocab.save(repo / "data" / "vocab" / "crf.json")
    run(repo, "dvc", "commit", "-q", "-f", "prepare_crf", "vocab_crf")
    # The MLflow store's tables too: the first run that creates them would be timed for it.
    run(repo, sys.executable, "-c", "from kexue import tracking; tracking.connect()")


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """The tiny project trained by one process with the job's global batch: (repo, loss, s)."""
    tiny = {
        **TINY_CRF,
        "crf.model.dropout": 0.0,
        "crf.train.batch_size": WORKERS * PER_REPLICA_BATCH,
    }
    repo = make_project(tmp_path_factory.mktemp("workers"), tiny)
    prepare_here(repo)
    start = time.monotonic()
    result = run(repo, "dvc", "repro", "train_crf")
    seconds = time.monotonic() - start
    assert stages_run(result.stdout) == ["train_crf"]
    return repo, final_loss(repo), seconds


@contextlib.contextmanager
def two_worker_job(repo, logs: Path) -> Iterator[list[subprocess.Popen]]:
    """The chief (`dvc repro train_crf`) and worker 1 (the stage's own command) of one job,
    each in its own process group, killed at exit."""
    ports = [free_port() for _ in range(WORKERS)]
    commands = [["dvc", "repro", "train_crf"], train_command(repo)]
    logs.mkdir(exist_ok=True)
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                process_group(command, logs / f"worker{index}.log", job_env(ports, index), cwd=repo)
            )
            for index, command in enumerate(commands)
        ]


def job_env(ports: list[int], index: int) -> dict:
    return {**ENV, "TF_CONFIG": tf_config(ports, index)}


def finish(repo, logs: Path) -> list[str]:
    """Run a two-worker job to its end; the tails of its logs."""
    with two_worker_job(repo, logs) as processes:
        codes = wait_for_all(processes, JOB_TIMEOUT_SECONDS)
    tails = [(logs / f"worker{index}.log").read_text()[-3000:] for index in range(WORKERS)]
    assert codes == [0] * WORKERS, tails
    return tails


@pytest.mark.slow
def test_two_workers_train_like_one_process_with_their_global_batch(single_process, tmp_path):
    repo, single_loss, single_seconds = single_process
    set_params(
        repo,
        {"runtime.strategy": "multi_worker", "crf.train.batch_size": PER_REPLICA_BATCH},
    )
    start = time.monotonic()
    chief_log, _ = finish(repo, tmp_path)
    job_seconds = time.monotonic() - start
    print(
        f"\ncrf, 3 epochs, global batch {WORKERS * PER_REPLICA_BATCH}: one process "
        f"{single_seconds:.1f} s, {WORKERS} workers {job_seconds:.1f} s (wall time)"
    )

    assert stages_run(chief_log) == ["train_crf"]
    segmenter = crf.Segmenter.load(
        repo / "models" / "crf" / crf.MODEL_FILE, repo / "data" / "vocab" / "crf.json", 4
    )
    assert "".join(segmenter.segment(["我们喜欢北京公园。"])[0]) == "我们喜欢北京公园。"
    assert final_loss(repo) == pytest.approx(single_loss, rel=LOSS_TOLERANCE)

    # One run per job, the chief's, knowing the job's size; no backup folder left behind.
    assert workers_of_runs(repo) == [("train_crf", "1"), ("train_crf", str(WORKERS))]
    assert not list((repo / ".kexue" / "backup").glob("crf-*"))


def backed_up_epochs(repo) -> dict[str, list[str]]:
    """Each backup folder's name and the curve rows it holds."""
    return {
        path.parent.name: path.read_text().splitlines()[1:]
        for path in (repo / ".kexue" / "backup").glob("crf-*/curves.csv")
    }


@pytest.mark.slow
def test_a_killed_job_resumes_on_every_worker_from_its_last_epoch(single_process, tmp_path):
    """Each worker backs up to a folder of its own (Keras 3's BackupAndRestore knows nothing of
    workers); killed after an epoch and started again, both resume from it."""
    repo = single_process[0]
    set_params(
        repo,
        {
            "runtime.strategy": "multi_worker",
            "crf.train.batch_size": PER_REPLICA_BATCH,
            "crf.train.epochs": RESUMED_EPOCHS,
        },
    )
    with two_worker_job(repo, tmp_path / "killed") as processes:
        while len(backups := backed_up_epochs(repo)) < WORKERS or not all(backups.values()):
            assert None in [process.poll() for process in processes], "ended before the kill"
            time.sleep(POLL_SECONDS)
        # Both at once, as a power cut would: a worker left alive sees its peer vanish.
        for process in processes:
            os.killpg(process.pid, signal.SIGKILL)
    chief_backup, worker_backup = sorted(backups)
    assert worker_backup == f"{chief_backup}-worker1"
    kept = backed_up_epochs(repo)
    assert kept[chief_backup] == kept[worker_backup]  # both ended the same epochs
    assert not (repo / "models" / "crf" / crf.MODEL_FILE).exists()

    finish(repo, tmp_path)
    rows = (repo / "plots" / "crf" / "train.csv").read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in rows] == list(range(1, RESUMED_EPOCHS + 1))
    assert rows[: len(kept[chief_backup])] == kept[chief_backup]  # restored, not retrained
    assert not list((repo / ".kexue" / "backup").glob("crf-*"))


def multi_worker(tmp_path) -> training.RuntimeConfig:
    return dataclasses.replace(tiny_runtime(tmp_path), strategy="multi_worker")


@pytest.mark.parametrize(
    ("cluster", "task", "chief"),
    [
        ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 0}, True),
        ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 1}, False),
        ({"chief": ["a:1"], "worker": ["b:1"]}, {"type": "chief", "index": 0}, True),
        ({"chief": ["a:1"], "worker": ["b:1"]}, {"type": "worker", "index": 0}, False),
    ],
)
def test_the_chief_and_the_job_size_come_from_tf_config(
    tmp_path, monkeypatch, cluster, task, chief
):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
    assert training.is_chief(multi_worker(tmp_path)) is chief
    assert training.worker_count(multi_worker(tmp_path)) == 2
    # Any other strategy is one process, whatever TF_CONFIG says.
    assert training.is_chief(tiny_runtime(tmp_path))
    assert training.worker_count(tiny_runtime(tmp_path)) == 1


def test_a_worker_writes_its_outputs_to_scratch_and_backs_up_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", tf_config([1, 2], 1))
    runtime = multi_worker(tmp_path)
    model_dir, curves = tmp_path / "models" / "crf", tmp_path / "plots" / "train.csv"
    with training.worker_outputs(runtime, model_dir, curves) as (own, own_model_dir, own_curves):
        assert own.backup_dir == f"{runtime.backup_dir}-worker1"
        assert own_model_dir.parent == own_curves.parent != model_dir.parent
        own_curves.write_text("epoch,loss\n")
    assert not own_curves.parent.exists()
    monkeypatch.setenv("TF_CONFIG", tf_config([1, 2], 0))
    with training.worker_outputs(runtime, model_dir, curves) as chief_paths:
        assert chief_paths == (runtime, model_dir, curves)


@pytest.mark.parametrize(
    ("tf_config_text", "message"),
    [
        ("{cluster: }", "expected a JSON object"),
        ('{"cluster": {"worker": ["a:1"]}}', 'expected "task"'),
    ],
)
def test_a_bad_tf_config_is_one_line_naming_it(tmp_path, monkeypatch, tf_config_text, message):
    monkeypatch.setenv("TF_CONFIG", tf_config_text)
    with pytest.raises(ParamsError, match=f"^TF_CONFIG: {message}"):
        training.is_chief(multi_worker(tmp_path))


def test_stages_after_training_run_on_one_machine(tmp_path):
    assert training.on_one_machine(multi_worker(tmp_path)).strategy == "auto"
    assert training.on_one_machine(tiny_runtime(tmp_path)) == tiny_runtime(tmp_path)
