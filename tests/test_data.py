import csv
import json

import pytest

from grpo.config import PromptConfig
from grpo.data import PromptRenderer, PromptStream, check_template, load_rows
from grpo.errors import UserError


def test_jsonl_csv_and_parquet_give_the_same_rows(tmp_path):
    rows = [{"question": "1+1", "answer": "2"}, {"question": "2+3", "answer": "5"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with (tmp_path / "d.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ["question", "answer"])
        writer.writeheader()
        writer.writerows(rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.csv", "d.parquet"):
        assert load_rows(str(tmp_path / name)) == rows


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(UserError, match=r"bad.jsonl, line 2: not valid JSON"):
        load_rows(str(tmp_path / "bad.jsonl"))


def test_missing_file_names_it(tmp_path):
    with pytest.raises(UserError, match="nothere.jsonl: no such file"):
        load_rows(str(tmp_path / "nothere.jsonl"))


def test_unreachable_hub_dataset_gives_a_clear_error():
    with pytest.raises(UserError, match="could not load it from the Hugging Face hub.*local"):
        load_rows("someone/some-dataset-that-is-not-here")


def test_template_columns_are_checked():
    problems = check_template("Q: {question} ({hint})", [{"question": "x", "answer": "y"}], "data.prompt_template", "f")
    assert problems == ["data.prompt_template: uses column {hint} that f does not have; its columns are question, answer"]


def test_stream_is_seeded_covers_every_row_per_epoch_and_resumes_exactly():
    rows = [{"i": i} for i in range(10)]
    a = PromptStream(rows, seed=3)
    first_epoch = [r["i"] for r in a.take(10)]
    assert sorted(first_epoch) == list(range(10)) and first_epoch != list(range(10))
    a.take(3)
    saved = a.state_dict()
    expected = [r["i"] for r in a.take(12)]
    b = PromptStream(rows, seed=3)
    b.load_state_dict(saved)
    assert [r["i"] for r in b.take(12)] == expected
    assert [r["i"] for r in PromptStream(rows, seed=3).take(10)] == first_epoch


def test_renderer_fills_template_and_encodes(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    r = PromptRenderer(tok, PromptConfig(prompt_template="Q: {question}\nA:"))
    text = r.text({"question": "1 + 2", "answer": "3"})
    assert text == "Q: 1 + 2\nA:"
    assert tok.decode(r.ids(text), skip_special_tokens=True) == text


def test_chat_template_required_when_asked(tiny_model_dir):
    from transformers import AutoTokenizer

    with pytest.raises(UserError, match="no chat template"):
        PromptRenderer(AutoTokenizer.from_pretrained(tiny_model_dir), PromptConfig(use_chat_template=True))
