"""The gigatoken engine: the reference tokenizer's ids exactly, or the reference itself (with the reason)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_ipt.data.indexed import IndexedDataset
from megatron_ipt.data.inputs import DataError
from megatron_ipt.data.preprocess import preprocess
from megatron_ipt.tokenizer import (
    HARD_CASES,
    GigatokenTokenizer,
    TokenizerError,
    gigatoken_of,
    gpt2_bpe_files,
    load_megatron_tokenizer,
    load_tokenizer,
    mistral_model_path,
    select_engine,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pubmed_texts() -> list[str]:
    from megatron_ipt.tuning.pubmed import iter_pubmed_records, shipped_pubmed_files

    return [r.abstract for r in iter_pubmed_records([shipped_pubmed_files()[1]], limit=300)]


@pytest.fixture(scope="module")
def reference(request, tmp_path_factory):
    """Each tokenizer of the suite that gigatoken loads, as the reference."""
    kind = request.param
    if kind == "mistral":
        return load_tokenizer("mistral")
    if kind == "mistral-hf-dir":
        from megatron_ipt.train.export import save_tokenizer

        out = tmp_path_factory.mktemp("mistral_hf")
        save_tokenizer("mistral", out)
        return load_tokenizer(out)
    vocab, merges = gpt2_bpe_files()
    return load_megatron_tokenizer("GPT2BPETokenizer", vocab_file=vocab, merge_file=merges)


KINDS = ["mistral", "mistral-hf-dir", "gpt2-bpe"]


@pytest.mark.parametrize("reference", KINDS, indirect=True)
def test_same_ids_as_reference_on_pubmed_and_hard_cases(reference, pubmed_texts) -> None:
    fast = select_engine(reference, "gigatoken", pubmed_texts)  # insists: raises on any difference
    assert isinstance(fast, GigatokenTokenizer) and fast.engine == "gigatoken"
    texts = pubmed_texts + list(HARD_CASES)
    want = reference.encode_batch(texts)
    assert fast.encode_batch(texts) == want
    flat, lengths = fast.encode_flat(texts)
    assert lengths.tolist() == [len(x) for x in want]
    assert flat.tolist() == [i for ids in want for i in ids]
    assert fast.fingerprint() == reference.fingerprint()  # the same tokenizer, whichever engine runs
    assert sum(lengths) > 50_000  # the PubMed sample is real text, not a handful of words


def _run(src, out, tok, engine, **kw) -> dict:
    return preprocess(src, out, tok, progress=False, tokenizer_engine=engine, **kw)


@pytest.mark.parametrize("reference", KINDS, indirect=True)
def test_preprocess_writes_the_same_bytes_under_both_engines(reference, pubmed_texts, tmp_path) -> None:
    """Plain texts, control-token strings, several keys, segments records, BOS/EOS, worker processes."""
    seg = [{"special": "bos", "loss": False}, {"text": "Question: </s> ok?\n", "loss": False},
           {"text": "Answer: 数据 😀", "loss": True}, {"special": "eos", "loss": True}]
    texts = pubmed_texts[:120] + [t for t in HARD_CASES if t.strip()]
    records = [{"text": t, "title": t[:30]} for t in texts]
    records.insert(7, {"segments": seg, "title": "segment record"})
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    for key, workers in (("text", 2), ("title", 0)):
        kw = {"json_key": key, "workers": workers, "batch_size": 37, "append_eod": True,
              "prepend_bos": reference.bos_id is not None}
        a = _run(src, tmp_path / f"ref{workers}", reference, "reference", **kw)
        b = _run(src, tmp_path / f"gig{workers}", reference, "gigatoken", **kw)
        assert a["tokenizer_engine"] == "reference" and b["tokenizer_engine"].startswith("gigatoken ")
        assert a["tokenizer_fingerprint"] == b["tokenizer_fingerprint"]
        assert (a["written"], a["tokens"]) == (b["written"], b["tokens"]) and a["written"] >= 120
        prefixes = [(a["prefix"], b["prefix"])]
        if key == "text":
            assert a["lossmask_prefix"] and b["lossmask_prefix"]
            prefixes.append((a["lossmask_prefix"], b["lossmask_prefix"]))
        for pa, pb in prefixes:
            for suffix in (".bin", ".idx"):
                assert Path(f"{pa}{suffix}").read_bytes() == Path(f"{pb}{suffix}").read_bytes(), (key, suffix)


def test_fallback_on_a_tokenizer_gigatoken_refuses(smollm2_dir, tmp_path, caplog) -> None:
    """SmolLM2's tokenizer.json does not load in gigatoken: auto runs the reference and says why, once."""
    tok = load_tokenizer(smollm2_dir)
    with pytest.raises(TokenizerError, match="gigatoken cannot load"):
        gigatoken_of(tok)
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": "Hello <|im_end|> world"}) + "\n")
    with caplog.at_level(logging.INFO, logger="megatron_ipt.tokenizer"):
        s = _run(src, tmp_path / "out", tok, "auto", workers=0, append_eod=True)
    lines = [r.getMessage() for r in caplog.records if "tokenizer engine" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("tokenizer engine: reference (gigatoken cannot load")
    assert s["tokenizer_engine"] == "reference"
    assert IndexedDataset(s["prefix"]).get(0).tolist() == tok.encode("Hello <|im_end|> world") + [tok.eos_id]
    with pytest.raises(TokenizerError, match="--tokenizer-engine gigatoken: gigatoken cannot load"):
        _run(src, tmp_path / "forced", tok, "gigatoken", workers=0)


def test_other_ids_mean_the_reference_decides(monkeypatch, tmp_path, caplog) -> None:
    """A gigatoken tokenizer that gives other ids (here GPT-2's under Mistral's name) never writes them."""
    import megatron_ipt.tokenizer.engines as engines_module

    gpt2 = load_tokenizer("gpt2")
    monkeypatch.setattr(engines_module, "gigatoken_of", lambda tok: gigatoken_of(gpt2))
    mistral = load_tokenizer("mistral")  # a fresh instance: nothing cached from other tests
    with caplog.at_level(logging.INFO, logger="megatron_ipt.tokenizer"):
        assert select_engine(mistral, "auto", ["plain text"]) is mistral
    assert "tokenizer engine: reference (other ids for" in caplog.text
    with pytest.raises(TokenizerError, match="other ids for"):
        select_engine(mistral, "gigatoken")
    with pytest.raises(TokenizerError, match="must be one of auto, gigatoken, reference"):
        select_engine(mistral, "fastest")


@pytest.mark.parametrize("engine", ["gigatoken", "reference"])
def test_bad_records_name_file_line_field_on_either_engine(tmp_path, mistral_tokenizer, engine) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"text": "good one"}\n{"text": 42}\n{"text": "bad \\ud800 surrogate"}\n{"text": "good two"}\n')
    with pytest.raises(DataError, match=rf"{src}:2: field 'text' is a int"):
        _run(src, tmp_path / "out", mistral_tokenizer, engine, workers=0)
    s = _run(src, tmp_path / "out", mistral_tokenizer, engine, workers=2, skip_bad=True)
    assert s["skipped"] == {"non_string_text": 1, "lone_surrogate": 1} and s["written"] == 2
    assert s["tokenizer_engine"].split()[0] == engine


MEMORY_SCRIPT = """
import json, resource, sys
from megatron_ipt.data.preprocess import preprocess
s = preprocess(sys.argv[1:-1], sys.argv[-1], "mistral", workers=0, progress=False, tokenizer_engine="gigatoken")
print(json.dumps({"tokens": s["tokens"], "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def test_streaming_memory_stays_flat_as_the_input_grows(tmp_path) -> None:
    """Peak RSS with 4x the input grows by far less than the 4x corpus's token array would take."""
    rng = np.random.default_rng(0)
    words = np.array("cell protein gene patient study results trial dose receptor mouse tumour 数据 🧬".split())
    part = "".join(json.dumps({"text": " ".join(rng.choice(words, 250))}) + "\n" for _ in range(10_000))
    for c in range(4):
        (tmp_path / f"part{c}.jsonl").write_text(part)
    peaks, tokens = [], []
    for copies in (1, 4):
        files = [str(tmp_path / f"part{c}.jsonl") for c in range(copies)]
        res = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, *files, str(tmp_path / f"out{copies}")],
                             cwd=REPO, capture_output=True, text=True, timeout=600, check=True)
        m = json.loads(res.stdout.strip().splitlines()[-1])
        peaks.append(m["rss_mb"])
        tokens.append(m["tokens"])
    assert tokens[1] == 4 * tokens[0] > 12_000_000
    whole_corpus_mb = tokens[1] * 4 / 2**20  # the 4x corpus as one uint32 array, as encode_files returns it
    assert peaks[1] - peaks[0] < whole_corpus_mb / 4, (peaks, whole_corpus_mb)


def test_megatron_sentencepiece_type_reads_any_file_name(tmp_path, capsys, mistral_tokenizer) -> None:
    """--tokenizer-type SentencePieceTokenizer with mistral-common's tokenizer.model.v1 equals --tokenizer mistral."""
    from data_tools.preprocess_data import main

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in HARD_CASES if t.strip()))
    model = mistral_model_path()
    assert model.name == "tokenizer.model.v1"
    assert main(["--input", str(src), "--output-prefix", str(tmp_path / "mlm"), "--tokenizer-type",
                 "SentencePieceTokenizer", "--tokenizer-model", str(model), "--append-eod", "--no-progress"]) == 0
    assert main(["--input", str(src), "--output-prefix", str(tmp_path / "ours"), "--tokenizer", "mistral",
                 "--append-eod", "--no-progress"]) == 0
    for suffix in (".bin", ".idx"):
        a = Path(f"{tmp_path}/mlm_text_document{suffix}").read_bytes()
        assert a == Path(f"{tmp_path}/ours_text_document{suffix}").read_bytes()
    printed = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert printed[0]["tokenizer_engine"].startswith("gigatoken")
    summary = json.loads(Path(f"{tmp_path}/mlm_text_document.summary.json").read_text())
    assert summary["tokenizer_fingerprint"]["hash"] == mistral_tokenizer.fingerprint()["hash"]


def test_megatron_tiktokenizer_equals_mistral_common_tekken_on_both_engines(tmp_path, capsys, pubmed_texts) -> None:
    """--tokenizer-type TikTokenizer on a Megatron-format vocabulary (Mistral NeMo's tekken ranks): the same ids
    as mistral-common's own Tekkenizer, through the reference and through gigatoken, and the same bytes."""
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    from data_tools.preprocess_data import main

    tekken = mistral_model_path().with_name("tekken_240911.json")
    ranks = tmp_path / "tekken_ranks.json"  # Megatron-LM reads a JSON list of {rank, token_bytes, token_str}
    ranks.write_text(json.dumps(json.loads(tekken.read_text())["vocab"]))
    tok = load_megatron_tokenizer("TikTokenizer", ranks)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (131072, 1, 2)
    texts = pubmed_texts[:50] + list(HARD_CASES)
    mc = Tekkenizer.from_file(tekken)
    assert tok.encode_batch(texts) == [mc.encode(t, bos=False, eos=False) for t in texts]
    assert not any(set(ids) & tok.special_ids for ids in tok.encode_batch(texts))  # "</s>" stays text
    fast = select_engine(tok, "gigatoken", texts)
    assert fast.encode_batch(texts) == tok.encode_batch(texts)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts if t.strip()))
    for engine in ("gigatoken", "reference"):
        assert main(["--input", str(src), "--output-prefix", str(tmp_path / engine), "--tokenizer-type", "TikTokenizer",
                     "--tokenizer-model", str(ranks), "--tiktoken-pattern", "v2", "--append-eod", "--workers",
                     "2" if engine == "gigatoken" else "0", "--tokenizer-engine", engine, "--no-progress"]) == 0
    for suffix in (".bin", ".idx"):
        a = Path(f"{tmp_path}/gigatoken_text_document{suffix}").read_bytes()
        assert a == Path(f"{tmp_path}/reference_text_document{suffix}").read_bytes()
    assert IndexedDataset(f"{tmp_path}/reference_text_document").get(0).tolist() == tok.encode(texts[0]) + [2]
