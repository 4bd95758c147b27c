"""The `kexue` command: verbs, stdin, errors as one line."""

import io

import pytest

from kexue import cli, registry, tracking
from kexue.models import crf


@pytest.fixture
def segmenter_dir(trained_crf, tmp_path, mlflow_store):
    out = tmp_path / "pyfunc"
    with tracking.stage_run("crf", "export", {}, data_hash="h"):
        registry.export_pyfunc(
            out, crf.pyfunc(trained_crf["config"], trained_crf["vocab"], trained_crf["model_dir"])
        )
    return out


def test_segment_prints_words_of_each_text(segmenter_dir, capsys):
    assert cli.main(["segment", "--model", str(segmenter_dir), "我们喜欢北京。", "散步"]) == 0
    assert capsys.readouterr().out.splitlines() == ["我们 喜欢 北京 。", "散步"]


def test_segment_reads_stdin_when_no_text(segmenter_dir, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("图书馆很好\n\n公园\n"))
    assert cli.main(["segment", "--model", str(segmenter_dir)]) == 0
    assert capsys.readouterr().out.splitlines() == ["图书馆 很 好", "公园"]


def test_missing_model_is_one_line(tmp_path, capsys, mlflow_store):
    assert cli.main(["segment", "--model", str(tmp_path / "nope"), "今天"]) == 1
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("kexue: cannot load model") and "nope" in last_line


def test_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "segment" in capsys.readouterr().out


def test_default_model_is_the_champion_under_the_name_params_registers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.champion("crf") == "models:/kexue-crf@champion"  # outside a project
    (tmp_path / "params.yaml").write_text("crf:\n  registered_name: my-segmenter\n")
    assert cli.champion("crf") == "models:/my-segmenter@champion"
    assert cli.champion("title") == "models:/kexue-title@champion"  # a project without it
