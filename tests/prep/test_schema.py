"""Every bad-input class is caught before anything is written, with file, row index and field in the message."""

import copy
import json

import pytest

from prep.reader import iter_rows, source_name
from prep.schema import ValidationError, validate_row
from tests.prep.conftest import with_field


@pytest.fixture(scope="module")
def good_row(gsm8k_path):
    return json.loads(gsm8k_path.read_text(encoding="utf-8"))[0]


def test_shipped_rows_are_valid(alpaca_path, gsm8k_path):
    for path in (alpaca_path, gsm8k_path):
        for _, row in iter_rows(path):
            validate_row(row)


@pytest.mark.parametrize(
    "path, value, field, words",
    [
        (("output",), KeyError, "output", "missing"),
        (("instruction_original",), None, "instruction_original", "null"),
        (("prompt_count",), "7", "prompt_count", "expected an integer"),
        (("prompt_count",), True, "prompt_count", "expected an integer"),
        (("prompt_count",), 2**64, "prompt_count", "does not fit in 64 bits"),
        (("input",), None, "input", "null"),
        (("input",), 3, "input", "expected a string"),
        (("paraphrases",), {}, "paraphrases", "expected a list"),
        (("paraphrases",), [], "paraphrases", "empty"),
        (("paraphrases", 2), "text", "paraphrases[2]", "expected an object"),
        (("paraphrases", 2, "answer"), KeyError, "paraphrases[2].answer", "missing"),
        (("paraphrases", 2, "paraphrase"), None, "paraphrases[2].paraphrase", "null"),
        (("paraphrases", 2, "task_score"), "9", "paraphrases[2].task_score", "expected a number"),
        (("paraphrases", 2, "bucket"), 2.0, "paraphrases[2].bucket", "expected an integer"),
        (("paraphrases", 2, "bucket"), 6, "paraphrases[2].bucket", "6 outside 1-5"),
        (("paraphrases", 2, "bucket"), 0, "paraphrases[2].bucket", "0 outside 1-5"),
        (("paraphrases", 2, "task_score"), 10.5, "paraphrases[2].task_score", "outside 0-10"),
        (("paraphrases", 2, "task_score"), -1, "paraphrases[2].task_score", "outside 0-10"),
        (("count_in_buckets",), [7, 2, 2, 0], "count_in_buckets", "expected 5"),
        (("count_in_buckets",), [7, 2, 2, 0, 1], "count_in_buckets", "disagrees"),
        (("count_in_buckets", 1), None, "count_in_buckets", "expected 5"),
        (
            ("paraphrases", 2, "paraphrase"),
            "x" * 100_000,
            "paraphrases[2].paraphrase",
            "100,000 characters, more than the limit of 16,384",
        ),
        (("paraphrases", 2, "instruct_type"), "t" * 257, "paraphrases[2].instruct_type", "more than the limit of 256"),
        (("output",), "é" * 16_385, "output", "16,385 characters"),
    ],
)
def test_bad_field_names_the_field(good_row, path, value, field, words):
    with pytest.raises(ValidationError) as info:
        validate_row(with_field(good_row, path, value))
    assert info.value.field == field
    assert words in info.value.message
    assert str(info.value).startswith(f"{field}: ")


def test_missing_input_means_no_input(good_row):
    validate_row(with_field(good_row, ("input",), KeyError))


def test_count_in_buckets_must_match_moved_paraphrase(good_row):
    row = copy.deepcopy(good_row)
    moved = next(p for p in row["paraphrases"] if p["bucket"] == 1)
    moved["bucket"] = 5  # counts now say 7 in bucket 1, paraphrases say 6
    with pytest.raises(ValidationError, match="disagrees"):
        validate_row(row)


@pytest.mark.parametrize("row", [[1, 2], "text", 3, None])
def test_row_that_is_not_an_object(row):
    with pytest.raises(ValidationError, match="expected an object"):
        validate_row(row)


def test_error_locates_file_row_and_field(good_row):
    error = ValidationError("6 outside 1-5", field="paraphrases[2].bucket", kind="outside 1-5").locate("x.json", 4)
    assert str(error) == "x.json: row 4: paraphrases[2].bucket: 6 outside 1-5"
    assert error.reason == "paraphrases[*].bucket: outside 1-5"


@pytest.mark.parametrize(
    "content, words, row",
    [
        (b"", "empty file", None),
        (b"  \n\t", "empty file", None),
        (b'{"prompt_count": 1}', "top level is an object", None),
        (b'"just text"', "top level is not a list", None),
        (b'[{"a": 1}, {"a": 2,,}]', "invalid JSON", 1),
        (b'[{"a": 1}, {"a": 2}', "invalid JSON", 2),
        (b'[{"a": 1}] trailing', "invalid JSON", 1),
        (b'[{"a": NaN}]', "row 0: a: NaN is not a JSON number", 0),
        (b'[{"a": "ok"}, {"a": "caf\xe9"}]', "not UTF-8", 1),
        ('[{"a": 1}]'.encode("utf-16"), "not UTF-8", None),
    ],
)
def test_file_level_errors(tmp_path, content, words, row):
    path = tmp_path / "alpaca_bad.json"
    path.write_bytes(content)
    with pytest.raises(ValidationError) as info:
        list(iter_rows(path))
    assert words in str(info.value)
    assert info.value.path == str(path) and info.value.row == row
    assert "\n" not in str(info.value)


def test_utf8_bom_is_accepted_and_hashed(tmp_path):
    import hashlib

    content = b'\xef\xbb\xbf[{"a": "caf\xc3\xa9"}, 2]'
    path = tmp_path / "alpaca_bom.json"
    path.write_bytes(content)
    digest = {}
    assert list(iter_rows(path, digest=digest)) == [(0, {"a": "café"}), (1, 2)]
    assert digest["sha256"] == hashlib.sha256(content).hexdigest()


def test_reader_streams_large_rows(tmp_path, good_row):
    """Rows crossing the 1 MiB read chunk still parse whole."""
    rows = [dict(good_row, prompt_count=i, output="x" * 300_000) for i in range(8)]
    path = tmp_path / "gsm8k_big.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    got = [row for _, row in iter_rows(path)]
    assert [r["prompt_count"] for r in got] == list(range(8)) and got[5]["output"] == "x" * 300_000


@pytest.mark.parametrize(
    "name, source",
    [
        ("alpaca_gemma-2-2b-it.json", "alpaca"),
        ("GSM8K_x_y.json", "gsm8k"),
        ("data/mmlu_part2.json", "mmlu"),
        ("plain.json", "plain"),
    ],
)
def test_source_name(name, source):
    assert source_name(name) == source
