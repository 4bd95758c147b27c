"""The CLI's daemon on the eight tiny models of tests/test_serve.py's project: every verb
prints the same with and without it (errors too), a moved `champion` is followed on the next
call, a killed daemon is reported in one line and the call still answered, two first calls
at once share one daemon, and it listens on nothing but its user-only socket. Every daemon a
test starts is stopped with its process group at the end of the file."""

import base64
import contextlib
import dataclasses
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import REPO
from test_serve import project  # noqa: F401  the eight tiny models, each version 1 and champion

from kexue import cli, daemon, params, registry, tracking
from kexue.models import crf

# One process runs this file and tests/test_serve.py: the tiny models are built once for both.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tiny_models")]

HEAVY = ("tensorflow", "mlflow", "pandas", "numpy")


@pytest.fixture(scope="module")
def daemons(project):  # noqa: F811
    """The ids of the daemons the tests start (the CLI does, in `project`); each is stopped
    with its process group at the end."""
    started = set()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KEXUE_DAEMON", "1")
        yield started
    state = daemon.read_state()
    if state:
        daemon.stop(state)  # SIGTERM: it removes its socket and state
    for pid in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    daemon.socket_path(project[0].resolve()).unlink(missing_ok=True)


def kexue(daemons: set, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `kexue *argv` run by cli.main in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    state = daemon.read_state()
    if state:
        daemons.add(state["pid"])
    return code, out.getvalue(), err.getvalue()


def kexue_process(*argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kexue.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def calls(project, tmp_path_factory):  # noqa: F811
    """Every verb with arguments, good and bad: [argv]."""
    root, folders = project
    images = tmp_path_factory.mktemp("images")
    for model, name in (("capsule", "digit.png"), ("dogs", "dog.jpg")):
        example = json.loads((folders[model] / "serving_input_example.json").read_text())
        (images / name).write_bytes(base64.b64decode(example["dataframe_split"]["data"][0][0]))
    (images / "text.png").write_bytes(b"not an image")
    return [
        ["segment", "我们喜欢北京。", "散步"],
        ["sentiment", "质量很好，推荐", "太差了"],
        ["similar", "人类", "北京", "--top", "3"],
        ["title", "床前明月光，疑是地上霜。"],
        ["poem", "-n", "2", "--seed", "7"],
        ["ode", "10", "20", "40", "--x1", "120"],
        ["digits", str(images / "digit.png")],
        ["classify", str(images / "dog.jpg"), "--top", "2"],
        ["title", "长" * 20001],  # over the model's max_request_chars
        ["digits", str(images / "text.png")],  # not an image
        ["segment", "--model", str(root / "no-such-model"), "今天"],
        ["ode", "ten"],
    ]


def kexue_lines(stderr: str) -> list[str]:
    """The CLI's own lines (in process, TensorFlow, MLflow and jieba may log around them)."""
    return [line for line in stderr.splitlines() if line.startswith("kexue:")]


def daemon_processes(root: Path) -> list[int]:
    """Pids of the `kexue daemon run` processes working in `root`."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            command = (entry / "cmdline").read_bytes()
            if b"daemon\0run" in command and Path(os.readlink(entry / "cwd")) == root:
                found.append(int(entry.name))
    return found


def test_two_first_calls_at_once_start_one_daemon_and_both_answer(project, daemons):  # noqa: F811
    assert daemon.read_state() is None
    expected = kexue(daemons, "segment", "--no-daemon", "我们喜欢北京。")[:2]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KEXUE_DAEMON", "1")
        both = [kexue_process("segment", "我们喜欢北京。") for _ in range(2)]
        answers = [(p.wait(), *p.communicate()) for p in both]
    daemons.add(daemon.read_state()["pid"])
    assert answers == [(*expected, "")] * 2
    assert daemon_processes(project[0].resolve()) == [daemon.read_state()["pid"]]


def test_every_verb_prints_the_same_with_and_without_the_daemon(calls, daemons):
    codes = []
    for argv in calls:
        alone = kexue(daemons, *argv, "--no-daemon")
        served = kexue(daemons, *argv)
        assert served[:2] == alone[:2], argv
        assert served[2] == "".join(f"{line}\n" for line in kexue_lines(alone[2])), argv
        codes.append(served[0])
    assert codes == [0] * 8 + [1] * 4


def test_a_call_after_the_champion_moved_gets_the_new_version(trained_crf, tmp_path, daemons):
    # The new version refuses a text longer than its own example, so it answers otherwise
    # than the champion, whatever both models make of the text.
    limit = len("".join(crf.input_example()["text"]))
    text = "我们喜欢北京公园，也喜欢图书馆。"
    assert len(text) > limit
    config = trained_crf["config"]
    config = dataclasses.replace(
        config, serve=dataclasses.replace(config.serve, max_request_chars=limit)
    )
    client = mlflow.MlflowClient()
    old = client.get_model_version_by_alias("kexue-crf", registry.CHAMPION).version
    with tracking.stage_run("crf", "export", {}, data_hash="h"):
        info = registry.export_pyfunc(
            tmp_path / "pyfunc",
            crf.pyfunc(config, trained_crf["vocab"], trained_crf["model_dir"]),
        )
    new = mlflow.register_model(info.model_uri, "kexue-crf").version
    before = kexue(daemons, "segment", text)
    assert before[0] == 0
    client.set_registered_model_alias("kexue-crf", registry.CHAMPION, new)
    try:
        after = kexue(daemons, "segment", text)
        alone = kexue(daemons, "segment", "--no-daemon", text)
        assert after[:2] == alone[:2] == (1, "")
        assert after[2] == "".join(f"{line}\n" for line in kexue_lines(alone[2]))
        client.delete_registered_model_alias("kexue-crf", registry.CHAMPION)
        gone = kexue(daemons, "segment", text)
        assert gone[0] == 1 and gone[2].startswith("kexue: cannot load model models:/kexue-crf@")
    finally:
        client.set_registered_model_alias("kexue-crf", registry.CHAMPION, old)
    assert kexue(daemons, "segment", text) == before


def test_a_killed_daemon_is_reported_once_and_the_call_answers_in_process(daemons):
    kexue(daemons, "segment", "散步")  # a daemon is up
    pid = daemon.read_state()["pid"]
    os.killpg(pid, signal.SIGKILL)
    while daemon.alive(pid):
        time.sleep(daemon.POLL_SECONDS)
    code, out, err = kexue(daemons, "segment", "散步")
    assert (code, out) == kexue(daemons, "segment", "--no-daemon", "散步")[:2]
    assert kexue_lines(err) == [
        f"kexue: the daemon (pid {pid}) has exited; answering in this process"
    ]
    assert kexue(daemons, "segment", "散步")[2] == ""  # the next call starts a new one
    assert daemon.read_state()["pid"] != pid


def test_the_daemon_listens_on_its_user_only_socket_and_nothing_else(daemons):
    kexue(daemons, "sentiment", "好")
    state = daemon.read_state()
    socket_file = Path(state["socket"])
    assert stat.S_IMODE(socket_file.stat().st_mode) == 0o600 and stat.S_ISSOCK(
        socket_file.stat().st_mode
    )
    assert stat.S_IMODE(socket_file.parent.stat().st_mode) == 0o700
    sockets = {
        os.readlink(f"/proc/{state['pid']}/fd/{fd}")
        for fd in os.listdir(f"/proc/{state['pid']}/fd")
    }
    listening = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if table.startswith("udp") or fields[3] == "0A":  # 0A: LISTEN
                listening.add(f"socket:[{fields[9]}]")
    assert not sockets & listening


def test_a_warm_call_imports_no_tensorflow_mlflow_pandas_or_numpy(daemons):
    kexue(daemons, "segment", "散步")  # a daemon is up
    check = (
        "import sys; from kexue import cli; code = cli.main(['segment', '散步']); "
        f"print(code, [m for m in {HEAVY!r} if m in sys.modules])"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KEXUE_DAEMON", "1")
        answer = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert answer.stdout.splitlines()[-1] == "0 []", answer.stderr


def test_status_names_the_daemon_and_stop_ends_it(daemons):
    kexue(daemons, "segment", "散步")
    pid = daemon.read_state()["pid"]
    code, out, _ = kexue(daemons, "daemon", "status")
    assert code == 0 and out.startswith(f"pid {pid}, socket ") and "crf\tversion " in out
    socket_file = Path(daemon.read_state()["socket"])
    assert kexue(daemons, "daemon", "stop")[:2] == (0, f"stopped the daemon (pid {pid})\n")
    assert not daemon.alive(pid) and daemon.read_state() is None and not socket_file.exists()
    assert kexue(daemons, "daemon", "status")[:2] == (0, "no daemon\n")


def test_an_idle_daemon_exits_by_itself(tmp_path, monkeypatch, daemons):
    """In a project of its own with no models (the call fails as it would in process) whose
    params.yaml gives the daemon a second of idle time."""
    loaded = params.load(REPO / "params.yaml")
    loaded["daemon"]["idle_seconds"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(loaded, allow_unicode=True))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    code, _, err = kexue(daemons, "segment", "今天")
    assert code == 1 and err.startswith("kexue: cannot load model models:/kexue-crf@champion")
    state = daemon.read_state()
    daemons.add(state["pid"])
    deadline = time.monotonic() + 60
    while daemon.alive(state["pid"]) and time.monotonic() < deadline:
        time.sleep(daemon.POLL_SECONDS)
    assert daemon.read_state() is None and not Path(state["socket"]).exists()
