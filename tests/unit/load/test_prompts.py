import json

import pytest

from tokenbench.config import DatasetPrompts, FilePrompts, SyntheticPrompts
from tokenbench.load import prompts
from tokenbench.load.prompts import PromptError, PromptStream, load_prompts, synthetic_prompts


class WordTokenizer:
    """A whitespace 'tokenizer' standing in for the engine's (boundary fake)."""

    def __init__(self):
        self.vocab, self.inv = {}, {}

    def encode(self, text):
        ids = []
        for w in text.split():
            if w not in self.vocab:
                self.vocab[w] = len(self.vocab)
                self.inv[self.vocab[w]] = w
            ids.append(self.vocab[w])
        return ids

    def decode(self, ids):
        return " ".join(self.inv[i] for i in ids)


def test_builtin_set_and_seeded_rounds():
    items, info = load_prompts("builtin")
    assert len(items) == 32 and info == {"source": "builtin"}
    a, b = PromptStream(items, 1, "x"), PromptStream(items, 1, "x")
    seq = [a.next()["id"] for _ in range(64)]
    assert seq == [b.next()["id"] for _ in range(64)]
    assert sorted(seq[:32]) == sorted(i["id"] for i in items)  # every prompt once per round
    assert seq != [PromptStream(items, 2, "x").next()["id"] for _ in range(64)]


def test_file_prompts_jsonl_and_csv(tmp_path):
    j = tmp_path / "p.jsonl"
    j.write_text('{"prompt": "a", "out": 5}\n{"prompt": "b", "out": 7}\n')
    items, info = load_prompts(FilePrompts(file=str(j), column="prompt", output_column="out"))
    assert [(i["text"], i["max_tokens"]) for i in items] == [("a", 5), ("b", 7)] and info["source"] == "file"
    c = tmp_path / "p.csv"
    c.write_text("question\nhello\nworld\n")
    assert [i["text"] for i in prompts.file_prompts(FilePrompts(file=str(c), column="question", limit=1))] == ["hello"]
    with pytest.raises(PromptError, match="has no column 'prompt'"):
        prompts.file_prompts(FilePrompts(file=str(c)))
    with pytest.raises(PromptError, match="does not exist"):
        prompts.file_prompts(FilePrompts(file=str(tmp_path / "nope.jsonl")))


def test_dataset_prompts_read_dolly_and_sharegpt_rows(monkeypatch, tmp_path):
    import huggingface_hub

    snap = tmp_path / "abc123"
    snap.mkdir()
    (snap / "databricks-dolly-15k.jsonl").write_text(
        json.dumps({"instruction": "Summarise", "context": "Some text", "response": "r"}) + "\n" +
        json.dumps({"instruction": "Name a colour", "context": "", "response": "red"}) + "\n")
    (snap / "ShareGPT_V3_unfiltered_cleaned_split.json").write_text(json.dumps([
        {"id": "x1", "conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello"}]},
        {"id": "x2", "conversations": [{"from": "gpt", "value": "orphan"}]}]))
    calls = []

    def fake_download(repo_id, filename, repo_type, revision, token, local_files_only):
        calls.append((repo_id, repo_type, revision))
        return str(snap / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    items, info = load_prompts(DatasetPrompts(dataset="dolly", revision="main", limit=10))
    assert [i["text"] for i in items] == ["Summarise\n\nSome text", "Name a colour"]
    assert info["resolved_revision"] == "abc123" and calls[0] == ("databricks/databricks-dolly-15k", "dataset", "main")
    items, _ = load_prompts(DatasetPrompts(dataset="sharegpt", limit=10))
    assert [i["text"] for i in items] == ["Hi there"]


def test_dataset_offline_is_a_clear_error(monkeypatch):
    import huggingface_hub

    def offline(**kw):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PromptError, match="offline .*Use prompts: builtin, or a local file"):
        load_prompts(DatasetPrompts(dataset="dolly"))


def test_synthetic_prompts_have_exact_token_length_and_differ():
    tok = WordTokenizer()
    items = synthetic_prompts(tok, 50, 8, seed=3)
    assert all(len(tok.encode(i["text"])) == 50 for i in items)
    assert len({i["text"] for i in items}) == 8
    assert [i["text"] for i in synthetic_prompts(tok, 50, 8, seed=3)] == [i["text"] for i in items]
    with pytest.raises(PromptError, match="needs the model's tokenizer"):
        load_prompts(SyntheticPrompts(synthetic={"input_tokens": 5, "count": 1}))
