"""BMES tagging, word scores, vocabularies and the segmented-corpus reader."""

import pytest

from kexue.data.corpora import read_segmented, split_sentences
from kexue.errors import DataError
from kexue.text.segmentation import bmes_tags, score_words, words_from_tags
from kexue.text.vocab import PAD, UNK, Vocabulary


def test_bmes_round_trip():
    words = ["今天", "天气", "不", "错", "中华人民"]
    tags = bmes_tags(words)
    assert tags == "BEBESSBMME"
    assert words_from_tags("".join(words), tags) == words


def test_dangling_begin_still_ends_a_word():
    assert words_from_tags("abc", "BMB") == ["abc"]
    assert words_from_tags("abc", "SBM") == ["a", "bc"]


def test_word_scores_by_span():
    gold = [["今天", "天气", "不错"]]
    predicted = [["今天", "天", "气", "不错"]]
    scores = score_words(gold, predicted)
    assert scores["precision"] == pytest.approx(2 / 4)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))


def test_vocabulary_is_deterministic_and_round_trips(tmp_path):
    vocab = Vocabulary.build(["abca", "bcd"], min_count=2, max_size=None)
    assert vocab.tokens == [PAD, UNK, "a", "b", "c"]
    assert vocab.encode("adz") == [2, 1, 1]
    vocab.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json").tokens == vocab.tokens


def test_vocabulary_reserved_tokens_follow_unk():
    vocab = Vocabulary.build(["abca", ["<s>", "d"]], 1, max_size=None, reserved=["<s>", "</s>"])
    assert vocab.tokens == [PAD, UNK, "<s>", "</s>", "a", "b", "c", "d"]
    assert Vocabulary.build(["abca"], 1, max_size=5, reserved=["<s>"]).tokens[3:] == ["a", "b"]


def test_reads_peoples_daily_format(tmp_path):
    corpus = tmp_path / "pd.txt"
    corpus.write_text("迈向/v  充满/v  [中央/n  人民/n]nt  。/w\n今天/t\n", encoding="utf-8")
    assert read_segmented(corpus) == [["迈向", "充满", "中央", "人民", "。"], ["今天"]]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("今天 天气\n\n不错\n".encode(), r"pd.txt:2: empty line"),
        (b"\xff\xfe bad\n", r"pd.txt:1: not UTF-8"),
        (b"", r"pd.txt: file is empty"),
    ],
)
def test_bad_corpus_gives_one_line_naming_file_and_line(tmp_path, content, expected):
    corpus = tmp_path / "pd.txt"
    corpus.write_bytes(content)
    with pytest.raises(DataError, match=expected) as err:
        read_segmented(corpus)
    assert "\n" not in str(err.value)


def test_missing_corpus_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"nope.txt: file not found"):
        read_segmented(tmp_path / "nope.txt")


def test_split_sentences_respects_the_length_cap():
    words = ["今天", "天气", "不错", "，", "我们", "去", "公园", "。", "好", "。"]
    assert split_sentences(words, max_chars=100) == [words[:8], words[8:]]
    pieces = split_sentences(words, max_chars=4)
    assert all(sum(map(len, p)) <= 4 for p in pieces)
    assert [w for p in pieces for w in p] == words


def test_full_width_maps_ascii_like_peoples_daily():
    from kexue.text.segmentation import full_width

    assert full_width("1998年, OK") == "１９９８年， ＯＫ"
