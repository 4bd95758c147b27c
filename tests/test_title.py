"""The seq2seq title generator on tiny data: readers, split, training, decoding, pyfunc, CLI."""

import dataclasses
import json
import random

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from conftest import REPO, assert_exported_with_example, tiny_runtime

from kexue import cli, params, registry, serving, splits, stats, tracking
from kexue.data.corpora import TitledText, matching_files, poem_title, read_titled_texts
from kexue.datasets import title as title_data
from kexue.errors import DataError
from kexue.models import title
from kexue.servers import served_model

CHARS = "春夏秋冬山水風月花雲江湖日夜"


def tiny_config(**data) -> title.Config:
    """The project's title config shrunk to train in seconds."""
    config = params.parse(
        title.Config, params.block(params.load(REPO / "params.yaml"), "title"), "title"
    )
    return dataclasses.replace(
        config,
        data=dataclasses.replace(
            config.data,
            **{
                "min_text_chars": 4,
                "max_pairs": None,
                "validation_fraction": 0.1,
                "test_fraction": 0.2,
                **data,
            },
        ),
        vocab=dataclasses.replace(config.vocab, min_count=1),
        model=title.ModelConfig(
            embedding_dim=16, hidden_dim=32, encoder_layers=1, attention_heads=2, dropout=0.0
        ),
        train=dataclasses.replace(
            config.train,
            epochs=20,
            patience=20,  # the copy is learnt late: keep the best of all 20 epochs
            batch_size=16,
            learning_rate=0.02,
            length_buckets=[8],
        ),
        decode=dataclasses.replace(config.decode, candidate_widths=[1, 3], beam_width=3),
        serve=dataclasses.replace(config.serve, batch_size=4),
    )


def tiny_pairs(n: int, seed: int) -> list[dict]:
    """Texts of random characters titled by their first two characters: a copy task."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        text = "".join(rng.choice(CHARS) for _ in range(rng.randint(5, 12)))
        rows.append({"text": text, "title": text[:2]})
    return rows


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")


@pytest.fixture(scope="module")
def trained_title(tmp_path_factory):
    root = tmp_path_factory.mktemp("title")
    write_jsonl(root / "pairs.jsonl", tiny_pairs(400, seed=1))
    config = tiny_config()
    title_data.prepare(config, [root / "pairs.jsonl"], root / "data")
    title_data.build_vocab(config, root / "data").save(root / "vocab.json")
    summary = title.train(
        config, tiny_runtime(root), root / "data", root / "vocab.json", root / "model",
        root / "curves.csv",
    )  # fmt: skip
    return {"root": root, "config": config, "summary": summary, "vocab": root / "vocab.json",
            "data": root / "data", "model_dir": root / "model"}  # fmt: skip


@pytest.fixture(scope="module")
def generator(trained_title):
    return title.load_generator(
        trained_title["config"], trained_title["model_dir"], trained_title["vocab"]
    )


# -- data -----------------------------------------------------------------------------------


def poem(title_text: str, *lines: str) -> dict:
    return {"author": "某", "title": title_text, "paragraphs": list(lines), "id": "x"}


def test_prepare_poems_cleans_and_splits_by_title(tmp_path):
    poems = [
        poem("帝京篇十首 一", "秦川雄帝宅，", "函谷壯皇居。"),
        poem("帝京篇十首 二", "巖廊罷機務，"),
    ]
    poems += [poem(f"春日{i}號", f"第{i}首春風起，", "花開滿山紅。") for i in range(8)]
    poems += [poem(f"秋興五首 {n}", f"秋興第{n}首。") for n in "一二三四五"]  # 3 kept
    poems += [
        poem("句", "一句斷章而已。"),  # one-character title: dropped
        poem("無題", "相見時難別亦難。"),  # placeholder title: dropped
        poem("短詩", "短"),  # text too short: dropped
        poem("重出", "秦川雄帝宅，", "函谷壯皇居。"),  # same text again: dropped
    ]
    (tmp_path / "tang").mkdir()
    (tmp_path / "tang" / "poet.tang.0.json").write_text(json.dumps(poems, ensure_ascii=False))
    (tmp_path / "tang" / "authors.tang.json").write_text("not read: include is poet.*")
    config = tiny_config(include=["tang/poet.*.json"], max_per_title=3)
    counts = title_data.prepare(config, [tmp_path], tmp_path / "out")
    sides = {side: f"{side}_pairs" for side in splits.SPLITS}
    assert counts["files"] == 1 and sum(counts[key] for key in sides.values()) == 2 + 8 + 3
    assert counts["validation_pairs"] > 0 and counts["test_pairs"] > 0
    train, validation, test = (
        read_titled_texts(tmp_path / "out" / f"{side}.jsonl") for side in splits.SPLITS
    )
    titles = [{p.title for p in side} for side in (train, validation, test)]
    assert titles[0] & titles[1] == titles[0] & titles[2] == titles[1] & titles[2] == set()
    train += validation
    # The series number is dropped, and the series stays on one side of the split.
    series = [p for p in train + test if p.title == "帝京篇十首"]
    assert [p.text for p in series] in (
        ["秦川雄帝宅，函谷壯皇居。", "巖廊罷機務，"],
        ["巖廊罷機務，", "秦川雄帝宅，函谷壯皇居。"],
    )
    assert (series[0] in train) == (series[1] in train)
    again = title_data.prepare(config, [tmp_path], tmp_path / "again")
    assert again == counts
    assert (tmp_path / "again" / "test.jsonl").read_text() == (
        tmp_path / "out" / "test.jsonl"
    ).read_text()


@pytest.mark.parametrize(
    ("raw", "own_title"),
    [
        ("帝京篇十首 一", "帝京篇十首"),  # the number in its series
        ("相和歌辭 從軍行", "從軍行"),  # the collection it belongs to
        ("雜曲歌辭 昇平樂 九", "昇平樂"),
        ("詩（幷序）", "詩"),  # an editor's note
        ("句  其二", "句"),
        ("", ""),
    ],
)
def test_poem_title_is_the_poems_own(raw, own_title):
    assert poem_title(raw) == own_title


def test_poem_text_is_its_lines_without_editors_notes(tmp_path):
    lines = ["（《雲谿友議》云：「某」）萬里楊柳色，", "出關送故人。（一作別）"]
    (tmp_path / "p.json").write_text(json.dumps([poem("送友人 二", *lines)]), "utf-8")
    assert read_titled_texts(tmp_path / "p.json") == [
        TitledText("萬里楊柳色，出關送故人。", "送友人")
    ]


def test_long_texts_are_cut_and_long_titles_dropped(tmp_path):
    write_jsonl(
        tmp_path / "p.jsonl",
        [{"text": "春" * 100, "title": "長文"}, {"text": "秋月", "title": "太" * 30}] * 1
        + [{"text": "夏 日\n長", "title": "夏 日"}],
    )
    config = tiny_config(
        max_text_chars=10, min_text_chars=2, validation_fraction=0, test_fraction=0.01
    )
    title_data.prepare(config, [tmp_path / "p.jsonl"], tmp_path / "out")
    pairs = read_titled_texts(tmp_path / "out" / "train.jsonl")
    pairs += read_titled_texts(tmp_path / "out" / "test.jsonl")
    assert sorted(pairs, key=lambda p: p.title) == [
        TitledText("夏日長", "夏日"),  # white space carries nothing: removed
        TitledText("春" * 10, "長文"),
    ]


def test_generic_formats(tmp_path):
    (tmp_path / "a.tsv").write_text("正文一\t標題\n", "utf-8")
    (tmp_path / "b.txt").write_text("新聞標題\n第一段。\n\n第二段。\n", "utf-8")
    write_jsonl(tmp_path / "c.jsonl", [{"text": "正文", "title": "題", "extra": 1}])
    assert read_titled_texts(tmp_path / "a.tsv") == [TitledText("正文一", "標題")]
    assert read_titled_texts(tmp_path / "b.txt") == [TitledText("第一段。第二段。", "新聞標題")]
    assert read_titled_texts(tmp_path / "c.jsonl") == [TitledText("正文", "題")]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("p.jsonl", '{"text": "a", "title": "b"}\n{"text": \n', r"p\.jsonl:2: not valid JSON"),
        (
            "p.jsonl",
            '{"text": "a", "title": 3}\n',
            r"p\.jsonl:1: title: expected a string, got int",
        ),
        ("p.jsonl", '["a", "b"]\n', r"p\.jsonl:1: expected an object with `text` and `title`"),
        ("p.tsv", "a\tb\tc\n", r"p\.tsv:1: expected text<TAB>title, got 3 fields"),
        ("p.json", '[{"title": "t"}]', r"p\.json: poem 1: expected an object with a list"),
        ("p.json", '{"title": "t"}', r"p\.json: expected a JSON list of poems"),
        ("p.csv", "a,b\n", r"p\.csv: expected a \.jsonl, \.tsv, \.json"),
    ],
)
def test_bad_corpus_gives_one_line_naming_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content, "utf-8")
    with pytest.raises(DataError, match=message):
        read_titled_texts(tmp_path / name)


def test_too_few_pairs_for_both_splits(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [{"text": "春眠不覺曉", "title": "春曉"}])
    with pytest.raises(DataError, match="1 groups cannot give 1 to test, 1 to validation"):
        title_data.prepare(tiny_config(), [tmp_path / "p.jsonl"], tmp_path / "out")


def test_folder_without_matching_files_names_the_key(tmp_path):
    with pytest.raises(
        DataError, match=r"no file matches \['tang/\*.json'\] \(title.data.include\)"
    ):
        matching_files([tmp_path], ["tang/*.json"], "title.data.include")
    with pytest.raises(DataError, match="nowhere: file or folder not found"):
        matching_files([tmp_path / "nowhere"], ["*.json"], "title.data.include")


def test_vocab_reserves_start_and_end(trained_title):
    tokens = json.loads(trained_title["vocab"].read_text())["tokens"]
    assert tokens[:4] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert set(tokens[4:]) == set(CHARS)


# -- model ----------------------------------------------------------------------------------


def test_tiny_model_learns(trained_title):
    rows = (trained_title["root"] / "curves.csv").read_text().splitlines()
    assert rows[0].split(",")[:3] == ["epoch", "loss", "val_loss"]
    losses = [float(r.split(",")[1]) for r in rows[1:]]
    assert trained_title["summary"]["best_epoch"] <= len(losses)
    assert len(losses) <= trained_title["config"].train.epochs
    assert losses[-1] < 0.6 * losses[0]


def test_no_held_out_text_as_the_model_reads_it_is_seen(tmp_path):
    """A text repeated under another title, or the same once cut and compacted, stays on
    the first side that has it; the held-out sides share no title with training."""
    rows = tiny_pairs(300, seed=2)
    rows += [{"text": "春夏秋冬山水風月花雲", "title": f"重{i}"} for i in range(10)]
    rows += [{"text": "春夏秋冬 山水風月花雲江湖", "title": f"又{i}"} for i in range(10)]
    write_jsonl(tmp_path / "p.jsonl", rows)
    config = tiny_config(max_text_chars=10)
    counts = title_data.prepare(config, [tmp_path / "p.jsonl"], tmp_path / "out")
    sides = {s: read_titled_texts(tmp_path / "out" / f"{s}.jsonl") for s in splits.SPLITS}
    texts = {s: [title.model_text(p.text, 10) for p in rows] for s, rows in sides.items()}
    assert splits.overlap(texts["validation"], texts["train"]) == 0
    assert splits.overlap(texts["test"], texts["train"] + texts["validation"]) == 0
    assert len(texts["test"]) == counts["test_pairs"] > 0
    titles = {s: {p.title for p in rows} for s, rows in sides.items()}
    assert splits.overlap(titles["test"], titles["train"] | titles["validation"]) == 0


def test_train_chooses_the_beam_width_on_validation(trained_title):
    summary = trained_title["summary"]
    assert summary["validation_pairs"] > 0
    widths = trained_title["config"].decode.candidate_widths
    figures = {w: summary[f"validation_rouge_l_beam_{w}"] for w in widths}
    assert summary["validation_best_beam_width"] in widths
    assert figures[summary["validation_best_beam_width"]] == max(figures.values())
    assert {"best_epoch", "best_val_loss"} <= set(summary)


def test_model_saves_and_loads_with_identical_outputs(tmp_path):
    model = title.build_model(30, tiny_config().model)
    source = np.array([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]], dtype="int32")
    target = np.array([[2, 5, 6], [2, 8, 0]], dtype="int32")
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    assert isinstance(loaded, title.TitleSeq2Seq)
    np.testing.assert_array_equal(loaded((source, target)), model((source, target)))
    # Padding after the text changes nothing: attention and the encoder skip it.
    padded = np.pad(source, ((0, 0), (0, 4)))
    np.testing.assert_allclose(model((padded, target)), model((source, target)), atol=1e-5)


def test_generator_titles_raw_text(generator, trained_title):
    texts = ["春夏秋冬山水", "", " \n ", "花月  江湖日夜", "龘龘龘龘"]
    titles = generator.generate(texts, beam_width=3, batch_size=2)
    assert titles[1] == titles[2] == ""
    for generated in titles:
        assert (
            isinstance(generated, str)
            and len(generated) <= trained_title["config"].data.max_title_chars
        )
        assert set(generated) <= set(CHARS)
    # The copy task is learnt often enough: the title starts the text.
    assert titles[0] == "春夏" and titles[3] == "花月"


def test_evaluate_scores_model_and_baselines(trained_title, tmp_path):
    config = trained_title["config"]
    metrics, scores = title.evaluate(
        config, trained_title["data"], trained_title["vocab"], trained_title["model_dir"], tmp_path
    )
    assert metrics["test_overlap"] == 0
    by_metric = {score.metric: score for score in scores}
    assert list(by_metric) == [title.SCORE, "rouge_2", "rouge_1"]
    for score in scores:
        # Beam 3 is served: greedy decoding is compared with it.
        assert set(score.baselines) == {"nearest_title", "first_k", "greedy"}
        assert all(
            len(v) == metrics["test_pairs"] for v in [score.model, *score.baselines.values()]
        )
    figures = stats.comparisons(scores, stats.BootstrapConfig(200, 0.95, 0))
    # first_k (the default, longer than the 2-character titles) keeps ROUGE below 1.
    assert figures["rouge_1_first_k"] == pytest.approx(2 * 2 / (2 + config.evaluate.first_k))
    # Attention learns the copy: most titles are exactly right, far above both baselines.
    assert metrics["exact"] > 0.8
    assert (
        figures["rouge_l"] > max(figures["rouge_l_nearest_title"], figures["rouge_l_first_k"]) + 0.2
    )
    assert figures["rouge_l_vs_first_k_low"] > 0
    systems = json.loads((tmp_path / "systems.json").read_text())
    assert [s["system"] for s in systems][0].startswith("seq2seq, beam")
    assert set(systems[0]) == {"system", "rouge_1", "rouge_2", "rouge_l"}
    assert systems[0]["rouge_l"] == pytest.approx(figures["rouge_l"])
    samples = json.loads((tmp_path / "samples.json").read_text())
    assert len(samples) == min(config.evaluate.samples, metrics["test_pairs"])
    assert set(samples[0]) == {"text", "title", "generated", "nearest_title"}


def test_greedy_is_no_baseline_when_it_is_served(trained_title, tmp_path):
    config = trained_title["config"]
    greedy = dataclasses.replace(config, decode=dataclasses.replace(config.decode, beam_width=1))
    _, scores = title.evaluate(
        greedy, trained_title["data"], trained_title["vocab"], trained_title["model_dir"], tmp_path
    )
    assert set(scores[0].baselines) == {"nearest_title", "first_k"}


# -- serving --------------------------------------------------------------------------------


@pytest.fixture
def title_pyfunc(trained_title, tmp_path, mlflow_store):
    out = tmp_path / "pyfunc"
    with tracking.stage_run("title", "export", {}, data_hash="h"):
        registry.export_pyfunc(
            out,
            title.pyfunc(
                trained_title["config"], trained_title["vocab"], trained_title["model_dir"]
            ),
        )
    return out


def test_exported_pyfunc_has_a_signature_and_an_example_that_scores(title_pyfunc):
    assert_exported_with_example(title_pyfunc)


def test_pyfunc_answers_raw_text_with_a_beam_width_param(title_pyfunc, generator):
    model = mlflow.pyfunc.load_model(str(title_pyfunc))
    texts = ["春夏秋冬山水", "", "花月江湖日夜"]
    out = model.predict(pd.DataFrame({"text": texts}))
    assert out.columns.tolist() == ["title"]
    assert out["title"].tolist() == generator.generate(texts, 3, 4)
    greedy = model.predict(pd.DataFrame({"text": texts}), params={"beam_width": 1})
    assert greedy["title"].tolist() == generator.generate(texts, 1, 4)
    assert greedy["title"][1] == ""


@pytest.mark.parametrize(
    ("frame", "params", "message"),
    [
        # The signature's schema answers first (HTTP 400 when served).
        (pd.DataFrame({"text": [12]}), None, "Incompatible input types for column text"),
        (pd.DataFrame({"body": ["春"]}), None, r"missing inputs \['text'\]"),
        (pd.DataFrame({"text": ["春"]}), {"beam_width": 0}, "beam_width must be between 1 and"),
        # Beams cost the time: texts x beam width is bounded, however short the texts.
        (pd.DataFrame({"text": ["春"] * 100}), {"beam_width": 16}, "1600 beams; the limit"),
    ],
)
def test_pyfunc_bad_requests_are_clear(title_pyfunc, frame, params, message):
    model = mlflow.pyfunc.load_model(str(title_pyfunc))
    with pytest.raises(mlflow.exceptions.MlflowException, match=message):
        model.predict(frame, params=params)


def test_integer_request_params_are_checked():
    assert serving.int_param(None, "beam_width", 3, 8) == 3
    assert serving.int_param({"beam_width": np.int64(5)}, "beam_width", 3, 8) == 5
    for bad in (True, 2.5, "3", 9, 0):
        with pytest.raises(mlflow.exceptions.MlflowException, match="beam_width must be"):
            serving.int_param({"beam_width": bad}, "beam_width", 3, 8)


def test_cli_prints_a_title_per_text(title_pyfunc, capsys, generator):
    assert cli.main(["title", "--model", str(title_pyfunc), "春夏秋冬山水", "花月江湖"]) == 0
    assert capsys.readouterr().out.splitlines() == generator.generate(
        ["春夏秋冬山水", "花月江湖"], 3, 4
    )
    assert cli.main(["title", "--model", str(title_pyfunc), "--beam-width", "99", "春"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("kexue: ") and "beam_width must be between 1 and" in error
    assert len(error.splitlines()) == 1


@pytest.mark.slow
def test_served_model_takes_beam_width_and_refuses_bad_ones(title_pyfunc, tmp_path, generator):
    frame = {"columns": ["text"], "data": [["春夏秋冬山水"], [""]]}

    def ask(params: dict) -> requests.Response:
        body = {"dataframe_split": frame, "params": params}
        return requests.post(url, json=body, timeout=60)

    with served_model(title_pyfunc, tmp_path / "serve.log") as url:
        answer = ask({"beam_width": 1})
        assert answer.status_code == 200, answer.text
        titles = [row["title"] for row in answer.json()["predictions"]]
        assert titles == [generator.generate(["春夏秋冬山水"], 1, 4)[0], ""]
        too_wide = ask({"beam_width": 1000})
        assert too_wide.status_code == 400
        assert "beam_width must be between 1 and" in too_wide.json()["message"]
        assert 400 <= ask({"beam_width": "wide"}).status_code < 500
