"""Shared fixtures of the training tests: a small slice of the stdlib corpus tokenised once per session, and one
CPU thread per test (on small CI machines two threads fighting over two cores are several times slower)."""
import pytest
import torch

from training.data import Corpus, prepare_pretraining_data

# the first files of the stdlib: ~0.5M tokens, enough for every test and tokenised in seconds
MAX_FILES = 40


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """The token cache directory holding the tiny preset's data (vocab 512) for the first MAX_FILES files."""
    directory = tmp_path_factory.mktemp("data")
    prepare_pretraining_data(Corpus.from_dir(max_files=MAX_FILES), directory, vocab_size=512, log=lambda m: None)
    return directory


@pytest.fixture(scope="session")
def tiny_data(data_dir):
    return prepare_pretraining_data(Corpus.from_dir(max_files=MAX_FILES), data_dir, vocab_size=512,
                                    log=lambda m: None)


@pytest.fixture(scope="session")
def pretrain_argv(data_dir):
    """argv(out, *extra): command line of a short tiny-preset pretraining run on the test corpus (small rows,
    fast on CPU); later options override earlier ones."""
    def argv(out, *extra) -> list[str]:
        return ["--preset", "tiny", "--data-dir", str(data_dir), "--max-files", str(MAX_FILES), "--out", str(out),
                "--seq-len", "64", "--batch-rows", "2", "--no-progress", "--no-plots", "--eval-batches", "2",
                "--device", "cpu", *map(str, extra)]
    return argv
