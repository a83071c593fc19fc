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
