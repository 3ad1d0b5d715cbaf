"""Pretraining data: corpus split, tokenizer, uint32 shards, packing with cu_seqlens, long-context mix, bad input."""
import numpy as np
import pytest
import torch

from training.data import (IGNORE_INDEX, SPECIAL_TOKENS, Corpus, PretrainBatches, TokenStream, load_tokenizer,
                           pack_rows, prepare_pretraining_data, row_lengths_for, train_tokenizer, write_token_shards)


def test_corpus_split_by_file_is_disjoint_and_stable():
    a, b = Corpus.from_dir(max_files=200), Corpus.from_dir(max_files=200)
    assert a.train_files and a.val_files
    assert not set(a.train_files) & set(a.val_files)
    assert len(a.train_files) + len(a.val_files) == 200
    assert (a.train_files, a.val_files) == (b.train_files, b.val_files)
    assert all("site-packages" not in p.parts for p in a.train_files + a.val_files)


def test_corpus_bad_input(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        Corpus.from_dir(tmp_path / "nowhere")
    (tmp_path / "empty.py").write_text("")
    with pytest.raises(ValueError, match="non-empty files"):
        Corpus.from_dir(tmp_path)


def test_tokenizer_special_ids_and_byte_level_round_trip(tiny_data):
    tok = tiny_data.tokenizer
    assert [tok.token_id(t) for t in SPECIAL_TOKENS[:3]] == [0, 1, 2]
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == 512
    text = "def f(x):\n    return x ** 2  # ünïcödé ✓\n"
    assert tok.tokenizer.decode(tok.encode(text)) == text


def test_tokenizer_training_is_deterministic(tmp_path):
    texts = [p.read_text(errors="replace") for p in Corpus.from_dir(max_files=5).train_files]
    a = train_tokenizer(texts, 300, tmp_path / "a")
    b = train_tokenizer(texts, 300, tmp_path / "b")
    assert a.sha256 == b.sha256
    with pytest.raises(ValueError, match="vocab_size must be >="):
        train_tokenizer(texts, 100, tmp_path / "c")
    with pytest.raises(ValueError, match="no tokenizer"):
        load_tokenizer(tmp_path / "missing")


def test_vocab_mismatch_is_reported(tiny_data):
    with pytest.raises(ValueError, match="tokenizer/model vocab mismatch"):
        tiny_data.tokenizer.check_fits(256)
    tiny_data.tokenizer.check_fits(512)
    tiny_data.tokenizer.check_fits(131072)


def test_shards_are_uint32_memmaps_read_across_boundaries(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 2**32 - 1, size=n, dtype=np.uint64).tolist() for n in (5, 1, 17, 9, 3)]
    total = write_token_shards(docs, tmp_path, "train", shard_tokens=7)
    stream = TokenStream(tmp_path, "train")
    flat = np.concatenate([np.asarray(d, dtype=np.uint32) for d in docs])
    assert total == len(stream) == len(flat) and len(stream.shards) == 5
    assert all(isinstance(s, np.memmap) and s.dtype == np.uint32 for s in stream.shards)
    for start, n in ((0, 35), (6, 9), (13, 1), (20, 15)):
        np.testing.assert_array_equal(stream.read(start, n), flat[start:start + n])
    assert stream.doc_starts.tolist() == [0, 5, 6, 23, 32, 35]
    with pytest.raises(IndexError):
        stream.read(30, 6)


def test_pack_rows_marks_rows_and_documents():
    # stream: doc A = 10..14 (starts 0), doc B = 20..22 (starts 5), doc C = 30..39 (starts 8)
    stream = np.array([10, 11, 12, 13, 14, 20, 21, 22] + list(range(30, 40)), dtype=np.uint32)
    doc_starts = np.array([0, 5, 8, 18], dtype=np.uint64)
    b = pack_rows([(2, stream[2:7]), (4, stream[4:10]), (9, stream[9:12])], doc_starts)
    assert b.input_ids.tolist() == [[12, 13, 14, 20, 14, 20, 21, 22, 30, 31, 32]]
    # the last token of a document predicts nothing (its successor starts another document)
    assert b.labels.tolist() == [[13, 14, IGNORE_INDEX, 21,
                                  IGNORE_INDEX, 21, 22, IGNORE_INDEX, 31,
                                  32, 33]]
    # segments: every row start (0, 4, 9) and every document start inside a row (3; 5, 8), then T
    assert b.cu_seqlens.tolist() == [0, 3, 4, 5, 8, 9, 11]
    assert b.num_tokens == 8


def test_batches_resume_and_split_across_ranks(tiny_data):
    rows = [64, 64]
    one = PretrainBatches(tiny_data.train, rows * 2)           # 1 rank, 4 rows
    two = [PretrainBatches(tiny_data.train, rows, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        whole = next(one)
        parts = [next(t) for t in two]
        assert torch.equal(torch.cat([p.input_ids for p in parts], 1), whole.input_ids)
        assert torch.equal(torch.cat([p.labels for p in parts], 1), whole.labels)
    state = two[1].state_dict()
    expected = next(two[1])
    again = PretrainBatches(tiny_data.train, rows, rank=1, world_size=2)
    again.load_state_dict(state)
    got = next(again)
    assert torch.equal(got.input_ids, expected.input_ids) and torch.equal(got.cu_seqlens, expected.cu_seqlens)
    with pytest.raises(ValueError, match="data position was saved for rows"):
        PretrainBatches(tiny_data.train, [32], rank=1, world_size=2).load_state_dict(state)


def test_batches_are_spread_over_the_stream(tiny_data):
    b = PretrainBatches(tiny_data.train, [64] * 8)
    starts = [b.row_start(g, 64) for g in range(64)]
    assert len(set(starts)) == 64
    # crops from all over the stream, not one file after another
    assert max(starts) - min(starts) > len(tiny_data.train) // 2


def test_long_context_mix():
    rows = row_lengths_for(4096, 128, long_seq_len=1024, long_fraction=0.5)
    assert rows == [1024, 1024] + [128] * 16
    assert row_lengths_for(512, 128) == [128] * 4
    with pytest.raises(ValueError, match="long_seq_len"):
        row_lengths_for(512, 128, long_seq_len=64, long_fraction=0.5)


def test_long_context_mix_batch_has_both_row_lengths(tiny_data):
    rows = row_lengths_for(1024, 64, long_seq_len=512, long_fraction=0.5)
    b = next(PretrainBatches(tiny_data.train, rows))
    assert b.input_ids.shape == (1, 1024)
    cu = b.cu_seqlens.tolist()
    assert 512 in cu and all(x in cu for x in range(512, 1025, 64))  # long row, then short rows


@pytest.mark.parametrize("seq_len", [0, 1])
def test_sequence_length_below_two_is_rejected(seq_len):
    with pytest.raises(ValueError, match="seq_len must be >= 2"):
        row_lengths_for(64, seq_len)


def test_stream_shorter_than_a_row_is_rejected(tiny_data):
    with pytest.raises(ValueError, match="shorter than a row"):
        PretrainBatches(tiny_data.val, [len(tiny_data.val)])


def test_data_cache_is_reused(tiny_data, data_dir):
    again = prepare_pretraining_data(Corpus.from_dir(max_files=40), data_dir, vocab_size=512, log=print)
    assert again.directory == tiny_data.directory and len(again.train) == len(tiny_data.train)
