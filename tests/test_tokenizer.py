import pickle

import pytest
import sentencepiece as spm

from megatron_ipt.tokenizer import TokenizerError, load_tokenizer, mistral_model_path


def test_mistral_matches_raw_sentencepiece(mistral_tokenizer):
    sp = spm.SentencePieceProcessor(model_file=str(mistral_model_path()))
    texts = ["Instruction pre-training works.", "  double  spaces\nand lines", "émigré 数据"]
    assert mistral_tokenizer.encode_batch(texts) == [sp.encode(t) for t in texts]
    assert (mistral_tokenizer.vocab_size, mistral_tokenizer.bos_id, mistral_tokenizer.eos_id) == (32000, 1, 2)
    ids = mistral_tokenizer.encode(texts[0])
    assert mistral_tokenizer.decode(ids) == texts[0]
    assert pickle.loads(pickle.dumps(mistral_tokenizer)).encode(texts[0]) == ids


def test_hf_directory(smollm2_dir):
    tok = load_tokenizer(smollm2_dir)
    ids = tok.encode("Hello world")
    assert ids and tok.decode(ids) == "Hello world"
    assert tok.vocab_size == 49152 and tok.eos_id is not None
    assert tok.bos_id not in ids  # encode never adds special tokens
    assert pickle.loads(pickle.dumps(tok)).encode("Hello world") == ids


def test_bad_specs(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer(tmp_path / "nope.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="cannot load SentencePiece"):
        load_tokenizer(bad)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(TokenizerError, match="not a .model"):
        load_tokenizer(tmp_path / "x.txt")


MARKERS = ["</s>", "<s>", "<unk>", "<|im_end|>", "<|im_start|>", "<|endoftext|>"]
DOCS = [f"Web text quoting {m} in the middle{m}and{m}" for m in MARKERS] + [
    "</s><|im_end|> at the very start", "a chat log: <|im_start|>user\nhi<|im_end|>\n<|endoftext|>"]


def _tokenizer_of_kind(kind: str, smollm2_dir, tmp_path_factory):
    from megatron_ipt.model.hf_import import smollm2_gguf_path
    from megatron_ipt.train.export import save_tokenizer

    if kind == "sentencepiece":
        return load_tokenizer("mistral")
    if kind == "hf-dir":
        return load_tokenizer(smollm2_dir)
    if kind == "gguf":
        return load_tokenizer(smollm2_gguf_path())
    if kind == "gpt2":
        return load_tokenizer("gpt2")
    out = tmp_path_factory.mktemp("mistral_hf")  # Mistral's SentencePiece model as an HF directory
    save_tokenizer("mistral", out)
    return load_tokenizer(out)


# gigatoken refuses SmolLM2's tokenizer ("Byte remapping failed"): those kinds run the reference only.
ENGINE_KINDS = [(k, "reference") for k in ("sentencepiece", "hf-dir", "gguf", "hf-dir-sentencepiece", "gpt2")] + [
    (k, "gigatoken") for k in ("sentencepiece", "hf-dir-sentencepiece", "gpt2")]


@pytest.mark.parametrize(("kind", "engine"), ENGINE_KINDS)
def test_control_tokens_in_user_text_stay_text(kind, engine, smollm2_dir, tmp_path_factory, tmp_path):
    """A literal </s> or <|im_end|> in a document is ordinary text; BOS/EOS only where the pipeline puts them."""
    import json

    from megatron_ipt.data.indexed import IndexedDataset
    from megatron_ipt.data.preprocess import preprocess
    from megatron_ipt.tokenizer import select_engine

    tok = select_engine(_tokenizer_of_kind(kind, smollm2_dir, tmp_path_factory), engine)
    assert tok.engine == engine
    assert {tok.bos_id, tok.eos_id} <= tok.special_ids
    for doc, ids in zip(DOCS, tok.encode_batch(DOCS), strict=True):
        assert not set(ids) & tok.special_ids, (doc, ids)
        assert tok.decode(ids) == doc
    # The same through preprocess (worker processes reload the tokenizer from its pickle).
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    s = preprocess(src, tmp_path / "out", tok, workers=1, prepend_bos=True, append_eod=True, progress=False,
                   tokenizer_engine=engine)
    assert s["tokenizer_engine"].split()[0] == engine
    ds = IndexedDataset(s["prefix"])
    assert len(ds) == len(DOCS)
    for i, doc in enumerate(DOCS):
        ids = [int(x) for x in ds[i]]
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
        assert not set(ids[1:-1]) & tok.special_ids, (doc, ids)
        assert tok.decode(ids[1:-1]) == doc


def test_fingerprint_names_vocabulary_not_spelling(smollm2_dir, tmp_path):
    """The same vocabulary loaded by two routes has one hash; another vocabulary another."""
    from megatron_ipt.model.hf_import import smollm2_gguf_path
    from megatron_ipt.train.export import save_tokenizer

    mistral = load_tokenizer("mistral").fingerprint()
    import shutil

    save_tokenizer("mistral", tmp_path)
    assert load_tokenizer(tmp_path).fingerprint()["hash"] == mistral["hash"]
    shutil.copyfile(mistral_model_path(), tmp_path / "copy.model")
    assert load_tokenizer(tmp_path / "copy.model").fingerprint()["hash"] == mistral["hash"]
    smol = load_tokenizer(smollm2_dir).fingerprint()
    assert load_tokenizer(smollm2_gguf_path()).fingerprint()["hash"] == smol["hash"]
    assert smol["hash"] != mistral["hash"]
    assert (mistral["vocab_size"], mistral["bos_id"], mistral["eos_id"], mistral["name"]) == (32000, 1, 2, "mistral")
    assert smol["vocab_size"] == 49152 and smol["name"] == str(smollm2_dir)


def test_gpt2_and_megatron_spellings(tmp_path):
    """'gpt2' and Megatron-LM's GPT2BPETokenizer (--vocab-file/--merge-file) are one tokenizer; the type decides."""
    from megatron_ipt.tokenizer import gpt2_bpe_files, load_megatron_tokenizer

    gpt2 = load_tokenizer("gpt2")
    assert (gpt2.vocab_size, gpt2.eos_id) == (50257, 50256)
    assert gpt2.encode("Hello world") == [15496, 995]  # GPT-2's published ids
    vocab, merges = gpt2_bpe_files()
    mlm = load_megatron_tokenizer("GPT2BPETokenizer", vocab_file=vocab, merge_file=merges)
    assert mlm.fingerprint()["hash"] == gpt2.fingerprint()["hash"]
    assert pickle.loads(pickle.dumps(gpt2)).encode("Hello world") == [15496, 995]
    renamed = tmp_path / "mistral-tokenizer.bin"  # no .model suffix: the type says what it is
    renamed.write_bytes(mistral_model_path().read_bytes())
    sp = load_megatron_tokenizer("SentencePieceTokenizer", renamed)
    assert sp.fingerprint()["hash"] == load_tokenizer("mistral").fingerprint()["hash"]
    with pytest.raises(TokenizerError, match="needs --vocab-file"):
        load_megatron_tokenizer("GPT2BPETokenizer")
    with pytest.raises(TokenizerError, match="not supported here"):
        load_megatron_tokenizer("BertWordPieceLowerCase", renamed)
    null = load_megatron_tokenizer("NullTokenizer", vocab_size=100)
    assert null.encode_batch(["1 2 3", "99"]) == [[1, 2, 3], [99]] and null.eos_id == 100 and null.vocab_size == 101
    with pytest.raises(TokenizerError, match="not space-separated integers"):
        null.encode("one two")
    with pytest.raises(TokenizerError, match="outside 0..99"):
        null.encode("100")
