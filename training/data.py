"""Pretraining data: a corpus that needs no download, a byte-level BPE tokenizer, uint32 memory-mapped token
shards, and batches of documents packed into rows with their boundaries as `cu_seqlens`.

The default corpus is the Python standard library of the running interpreter (`sysconfig` "stdlib", without
site-packages and the test suites), split into train / validation by file. Every document is stored as
`<s> tokens </s>`; the shard of a split is the concatenation of its documents plus `docs.npy`, the start offset
of every document. A batch is a set of rows (fixed length, or a mix of long and short rows) cropped at random
positions of that stream and flattened into one packed sequence; `cu_seqlens` marks every row start and
document start, so attention, the causal conv and the SSD scan never cross a document; the label of a
document's last token (which would be the next document's first token) is ignored (-100).

Shape legend: T tokens of one packed batch (all rows of a rank, flattened), S segments (rows cut at documents).
"""
from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

IGNORE_INDEX = -100
# Our trained tokenizer's special tokens; their ids 0, 1, 2 match NemotronHConfig's pad / bos / eos defaults.
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
# ChatML, as the Nemotron tokenizer writes turns; used when a tokenizer has no chat template of its own.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------- corpus
@dataclass
class Corpus:
    """Text files split by file into train and validation. `root` is where relative names start."""
    root: Path
    train_files: list[Path]
    val_files: list[Path]

    @classmethod
    def from_dir(cls, root: str | os.PathLike | None = None, *, suffixes=(".py",), val_fraction: float = 0.05,
                 max_files: int | None = None) -> "Corpus":
        """Every file under `root` (default: the stdlib of the running interpreter) whose name ends with one of
        `suffixes`, skipping site-packages and test-suite folders. A file goes to validation when the hash of its
        relative path falls below `val_fraction` (stable across machines); both splits get at least one file.
        `max_files` keeps the first files in sorted order (small, fast runs)."""
        root = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
        if not root.is_dir():
            raise ValueError(f"corpus directory {root} does not exist (or is not a directory)")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)   # prune site-packages, tests
            for name in filenames:
                p = Path(dirpath) / name
                if p.suffix in suffixes and p.is_file() and p.stat().st_size > 0:
                    files.append(p)
        files.sort()
        if max_files is not None:
            files = files[:max_files]
        if len(files) < 2:
            raise ValueError(f"corpus directory {root} has {len(files)} non-empty files ending in {list(suffixes)}; "
                             f"need at least 2 (one for training, one for validation)")

        def to_val(p):
            digest = hashlib.sha256(p.relative_to(root).as_posix().encode()).digest()
            return int.from_bytes(digest[:8], "little") / 2**64 < val_fraction

        val = [p for p in files if to_val(p)] or files[-1:]
        train = [p for p in files if p not in set(val)] or files[:1]
        val = [p for p in val if p not in set(train)]
        return cls(root, train, val)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for split, files in (("train", self.train_files), ("val", self.val_files)):
            for p in files:
                h.update(f"{split}:{p.relative_to(self.root).as_posix()}:{p.stat().st_size}\n".encode())
        return h.hexdigest()


def read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------- tokenizer
@dataclass
class TokenizerInfo:
    """A `tokenizers.Tokenizer` with the ids and chat template the loops need."""
    tokenizer: object
    path: Path                      # the tokenizer.json
    vocab_size: int                 # including added / special tokens
    bos_id: int | None
    eos_id: int
    pad_id: int
    chat_template: str
    sha256: str

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def token_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def check_fits(self, model_vocab_size: int) -> None:
        """A tokenizer with more ids than the model's embedding rows would index past the embedding."""
        if self.vocab_size > model_vocab_size:
            raise ValueError(f"tokenizer/model vocab mismatch: tokenizer {self.path} has {self.vocab_size} tokens but "
                             f"the model's vocab_size is {model_vocab_size}; use a model preset with vocab_size >= "
                             f"{self.vocab_size} or a tokenizer with a smaller vocabulary")


def train_tokenizer(texts, vocab_size: int, out_dir: str | os.PathLike) -> TokenizerInfo:
    """Trains a byte-level BPE (`tokenizers`) on an iterable of strings; writes tokenizer.json and
    tokenizer_config.json (special tokens + chat template) into out_dir and returns the loaded tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    n_base = 256 + len(SPECIAL_TOKENS)
    if vocab_size < n_base:
        raise ValueError(f"vocab_size must be >= {n_base} (256 bytes + {len(SPECIAL_TOKENS)} special tokens), "
                         f"got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f"tokenizer.json.tmp{os.getpid()}"
    tok.save(str(tmp))
    os.replace(tmp, out_dir / "tokenizer.json")
    config = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "chat_template": DEFAULT_CHAT_TEMPLATE,
              "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1 << 30}
    _write_json(out_dir / "tokenizer_config.json", config)
    return load_tokenizer(out_dir)


def load_tokenizer(path: str | os.PathLike) -> TokenizerInfo:
    """From a tokenizer.json, or a directory (e.g. a checkpoint) holding tokenizer.json and optionally
    tokenizer_config.json (bos / eos / pad tokens, chat_template) or chat_template.jinja. Without a template the
    ChatML turns of DEFAULT_CHAT_TEMPLATE are used."""
    from tokenizers import Tokenizer

    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"no tokenizer at {file}")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises its own exception type on malformed files
        raise ValueError(f"cannot load tokenizer {file}: {e}") from e
    config = {}
    config_file = file.parent / "tokenizer_config.json"
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"cannot parse {config_file}: {e}") from e

    def special(key, fallbacks):
        value = config.get(key)
        if isinstance(value, dict):  # {"content": "<s>", ...}
            value = value.get("content")
        for name in ([value] if value else []) + fallbacks:
            tid = tok.token_to_id(name)
            if tid is not None:
                return tid
        return None

    eos_id = special("eos_token", ["</s>", "<|im_end|>", "<|endoftext|>"])
    if eos_id is None:
        raise ValueError(f"tokenizer {file} has no end-of-sequence token (tokenizer_config.json eos_token, </s>, "
                         f"<|im_end|> or <|endoftext|>)")
    pad_id = special("pad_token", ["<pad>", "<unk>"])
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if not template and (file.parent / "chat_template.jinja").is_file():
        template = (file.parent / "chat_template.jinja").read_text()
    return TokenizerInfo(tokenizer=tok, path=file, vocab_size=tok.get_vocab_size(with_added_tokens=True),
                         bos_id=special("bos_token", ["<s>"]), eos_id=eos_id,
                         pad_id=pad_id if pad_id is not None else eos_id,
                         chat_template=template or DEFAULT_CHAT_TEMPLATE,
                         sha256=hashlib.sha256(file.read_bytes()).hexdigest())


# ---------------------------------------------------------------------------------------------- shards
class TokenStream:
    """The tokens of one split: uint32 shard files memory-mapped and read as one stream, plus document starts.

    Files in `directory`: {split}_{k:05d}.bin (raw little-endian uint32) and {split}.docs.npy (uint64 [ndocs+1],
    the start of every document and the total length)."""

    def __init__(self, directory: str | os.PathLike, split: str):
        directory = Path(directory)
        docs_file = directory / f"{split}.docs.npy"
        if not docs_file.is_file():
            raise ValueError(f"no token shards for split {split!r} in {directory} (missing {docs_file.name})")
        self.doc_starts = np.load(docs_file)                                   # [ndocs + 1] uint64
        self.shards = []
        k = 0
        while (f := directory / f"{split}_{k:05d}.bin").is_file():
            self.shards.append(np.memmap(f, dtype=np.uint32, mode="r"))
            k += 1
        sizes = [len(s) for s in self.shards]
        self.shard_starts = np.cumsum([0] + sizes)                             # [nshards + 1]
        if int(self.shard_starts[-1]) != int(self.doc_starts[-1]):
            raise ValueError(f"token shards of {split!r} in {directory} hold {int(self.shard_starts[-1])} tokens but "
                             f"{docs_file.name} says {int(self.doc_starts[-1])}: the data folder is damaged; delete it")

    def __len__(self) -> int:
        return int(self.shard_starts[-1])

    @property
    def num_docs(self) -> int:
        return len(self.doc_starts) - 1

    def read(self, start: int, n: int) -> np.ndarray:
        """tokens [n] uint32 of the stream from `start` (may span shards)."""
        if start < 0 or start + n > len(self):
            raise IndexError(f"read [{start}, {start + n}) outside the stream of {len(self)} tokens")
        out = np.empty(n, dtype=np.uint32)
        k = int(np.searchsorted(self.shard_starts, start, side="right")) - 1
        done = 0
        while done < n:
            local = start + done - int(self.shard_starts[k])
            take = min(n - done, len(self.shards[k]) - local)
            out[done:done + take] = self.shards[k][local:local + take]
            done += take
            k += 1
        return out

    def unigram_entropy(self, vocab_size: int) -> float:
        """Entropy (nats) of the token frequencies of this split: the loss of the best context-free model."""
        counts = np.zeros(vocab_size, dtype=np.int64)
        for s in self.shards:
            for a in range(0, len(s), 1 << 24):
                counts += np.bincount(s[a:a + (1 << 24)], minlength=vocab_size)[:vocab_size]
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log(p)).sum())


def write_token_shards(docs, directory: str | os.PathLike, split: str, shard_tokens: int = 1 << 28) -> int:
    """Writes an iterable of token-id lists (documents) as uint32 shards + docs.npy; returns the token count.
    Files are written under temporary names and renamed when complete."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    starts, total, k = [0], 0, 0
    buf, buf_len = [], 0

    def flush():
        nonlocal k, buf, buf_len
        if buf_len:
            tmp = directory / f"{split}_{k:05d}.bin.tmp"
            np.concatenate(buf).astype(np.uint32).tofile(tmp)
            os.replace(tmp, directory / f"{split}_{k:05d}.bin")
            k += 1
        buf, buf_len = [], 0

    for ids in docs:
        arr = np.asarray(ids, dtype=np.uint32)
        while len(arr):
            take = min(len(arr), shard_tokens - buf_len)
            buf.append(arr[:take])
            buf_len += take
            arr = arr[take:]
            if buf_len == shard_tokens:
                flush()
        total += len(ids)
        starts.append(total)
    flush()
    tmp = directory / f"{split}.docs.tmp.npy"
    np.save(tmp, np.asarray(starts, dtype=np.uint64))
    os.replace(tmp, directory / f"{split}.docs.npy")
    return total


def _tokenize_files(files, tok: TokenizerInfo, batch: int = 64):
    bos = [tok.bos_id] if tok.bos_id is not None else []
    for a in range(0, len(files), batch):
        texts = [read_text(p) for p in files[a:a + batch]]
        for enc in tok.tokenizer.encode_batch(texts, add_special_tokens=False):
            yield bos + enc.ids + [tok.eos_id]


@dataclass
class PretrainData:
    tokenizer: TokenizerInfo
    train: TokenStream
    val: TokenStream
    directory: Path


def prepare_pretraining_data(corpus: Corpus, data_dir: str | os.PathLike, *, vocab_size: int | None = None,
                             tokenizer: str | os.PathLike | None = None, log=print) -> PretrainData:
    """Tokenizer + token shards for `corpus`, cached under data_dir/<fingerprint> (reused when present).
    Either `tokenizer` (a tokenizer.json or a directory holding one) or `vocab_size` (train a byte-level BPE on
    the train split) must be given."""
    if (tokenizer is None) == (vocab_size is None):
        raise ValueError("give exactly one of tokenizer (a tokenizer.json / checkpoint directory) or vocab_size "
                         "(train a BPE)")
    key = hashlib.sha256(f"v{_FORMAT_VERSION}:{corpus.fingerprint()}:".encode())
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
        key.update(f"tokenizer:{tok.sha256}".encode())
    else:
        key.update(f"bpe:{vocab_size}".encode())
    directory = Path(data_dir) / key.hexdigest()[:16]
    if (directory / "meta.json").is_file():
        tok = load_tokenizer(directory)
        return PretrainData(tok, TokenStream(directory, "train"), TokenStream(directory, "val"), directory)

    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        log(f"training a byte-level BPE tokenizer (vocab {vocab_size}) on {len(corpus.train_files)} files "
            f"of {corpus.root}")
        tok = train_tokenizer((read_text(p) for p in corpus.train_files), vocab_size, directory)
    else:
        tok.tokenizer.save(str(directory / "tokenizer.json"))
        config = tok.path.parent / "tokenizer_config.json"
        if config.is_file():
            (directory / "tokenizer_config.json").write_bytes(config.read_bytes())
        tok = load_tokenizer(directory)
    counts = {}
    for split, files in (("train", corpus.train_files), ("val", corpus.val_files)):
        counts[split] = write_token_shards(_tokenize_files(files, tok), directory, split)
        log(f"tokenised {split}: {len(files)} files -> {counts[split]:,} tokens")
    _write_json(directory / "meta.json", {"version": _FORMAT_VERSION, "corpus_root": str(corpus.root),
                                          "tokens": counts, "vocab_size": tok.vocab_size,
                                          "tokenizer_sha256": tok.sha256})
    return PretrainData(tok, TokenStream(directory, "train"), TokenStream(directory, "val"), directory)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- batches
@dataclass
class PackedBatch:
    """One rank's rows, flattened into a single packed sequence (the model's cu_seqlens form, B = 1)."""
    input_ids: torch.Tensor     # [1, T] int64
    labels: torch.Tensor        # [1, T] int64, IGNORE_INDEX where there is nothing to predict
    cu_seqlens: torch.Tensor    # [S+1] int32: starts of rows and documents, then T
    num_tokens: int             # labels that count (!= IGNORE_INDEX)

    def to(self, device) -> "PackedBatch":
        """On `device`; to a GPU through pinned host memory, so the copies never wait for the GPU's queue."""
        pin = torch.device(device).type == "cuda"

        def move(t: torch.Tensor) -> torch.Tensor:
            return (t.pin_memory() if pin and t.device.type == "cpu" else t).to(device, non_blocking=True)

        return PackedBatch(move(self.input_ids), move(self.labels), move(self.cu_seqlens), self.num_tokens)


def row_lengths_for(tokens_per_rank: int, seq_len: int, long_seq_len: int | None = None,
                    long_fraction: float = 0.0) -> list[int]:
    """Row lengths of one rank's batch: all `seq_len`, or (long-context mix) `long_fraction` of the tokens in rows
    of `long_seq_len` and the rest in rows of `seq_len` (the paper mixes 512K and 4K rows; scale both down)."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (a row needs a token and its successor), got {seq_len}")
    if tokens_per_rank < seq_len:
        raise ValueError(f"tokens per rank ({tokens_per_rank}) must be >= seq_len ({seq_len})")
    if not long_fraction:
        return [seq_len] * (tokens_per_rank // seq_len)
    if not 0.0 < long_fraction <= 1.0:
        raise ValueError(f"long_fraction must be in [0, 1], got {long_fraction}")
    if long_seq_len is None or long_seq_len < seq_len or long_seq_len > tokens_per_rank:
        raise ValueError(f"long_seq_len must lie in [seq_len={seq_len}, tokens per rank={tokens_per_rank}] for a "
                         f"long-context mix, got {long_seq_len}")
    n_long = max(1, round(long_fraction * tokens_per_rank / long_seq_len))
    n_short = (tokens_per_rank - n_long * long_seq_len) // seq_len
    return [long_seq_len] * n_long + [seq_len] * n_short


def pack_rows(rows: list[tuple[int, np.ndarray]], doc_starts: np.ndarray) -> PackedBatch:
    """Rows (start, tokens [L+1]) of a stream with document starts `doc_starts`, flattened into one packed batch:
    a row's inputs are its first L tokens, its labels the L tokens one further. Segments begin at every row start
    and every document start; a document's last token gets no label (its successor belongs to another document)."""
    inputs, labels, bounds, offset = [], [], [0], 0
    for start, tokens in rows:
        L = len(tokens) - 1
        tok = torch.from_numpy(tokens.astype(np.int64))
        row_labels = tok[1:].clone()
        lo = int(np.searchsorted(doc_starts, start, side="right"))
        hi = int(np.searchsorted(doc_starts, start + L, side="right"))
        doc_local = doc_starts[lo:hi].astype(np.int64) - start                  # documents starting in (0, L]
        row_labels[torch.from_numpy(doc_local - 1)] = IGNORE_INDEX
        bounds += [offset + int(d) for d in doc_local if d < L] + [offset + L]
        inputs.append(tok[:-1])
        labels.append(row_labels)
        offset += L
    labels_t = torch.cat(labels)
    return PackedBatch(torch.cat(inputs)[None], labels_t[None], torch.tensor(bounds, dtype=torch.int32),
                       int((labels_t != IGNORE_INDEX).sum()))


class PretrainBatches:
    """Packed batches of random rows of a TokenStream for one rank of a data-parallel group.

    Row g of the run (g counts rows over steps and ranks: step * W * R + rank * R + j for R rows per rank) starts
    at a position drawn from a generator seeded with (seed, g), uniform over the stream. So the batches are iid
    crops independent of the file order, the same rows whatever the number of ranks, and the step counter is the
    whole state: resuming from it replays exactly the same batches."""

    def __init__(self, stream: TokenStream, row_lengths: list[int], *, rank: int = 0, world_size: int = 1,
                 seed: int = 0):
        self.stream, self.row_lengths = stream, list(row_lengths)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        longest = max(self.row_lengths)
        if longest + 1 > len(stream):
            raise ValueError(f"the token stream ({len(stream):,} tokens) is shorter than a row of {longest} tokens "
                             f"+ 1; use a larger corpus or shorter rows")
        self.step = 0

    def __iter__(self):
        return self

    def row_start(self, g: int, length: int) -> int:
        return int(np.random.default_rng([self.seed, g]).integers(0, len(self.stream) - length))

    def __next__(self) -> PackedBatch:
        R = len(self.row_lengths)
        first = (self.step * self.world_size + self.rank) * R
        rows = []
        for j, L in enumerate(self.row_lengths):
            start = self.row_start(first + j, L)
            rows.append((start, self.stream.read(start, L + 1)))
        self.step += 1
        return pack_rows(rows, self.stream.doc_starts)

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "row_lengths": self.row_lengths, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if (state["row_lengths"], state["world_size"], state["seed"]) != (self.row_lengths, self.world_size,
                                                                         self.seed):
            raise ValueError(f"data position was saved for rows {state['row_lengths']} x {state['world_size']} "
                             f"ranks (seed {state['seed']}), this run uses {self.row_lengths} x {self.world_size} "
                             f"(seed {self.seed})")
        self.step = int(state["step"])
