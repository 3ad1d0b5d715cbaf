"""`python -m model.serve`: argument errors, and a real server process answering on loopback, stopped by SIGTERM:
random weights from a preset, and a saved checkpoint quantised to FP8 on load (--checkpoint DIR --fp8)."""
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from model.checkpoint import save_checkpoint
from model.generate import byte_level_tokenizer
from model.serve import LLM, SamplingParams
from model.serve.__main__ import _parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("argv, message", [
    ([], "give --checkpoint DIR, or --random-weights --preset NAME"),
    (["--preset", "tiny"], "--preset needs --random-weights"),
    (["--checkpoint", "x", "--preset", "tiny", "--random-weights"], "give --checkpoint DIR, or"),
])
def test_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        _parse_args(argv)
    assert message in capsys.readouterr().err


@contextlib.contextmanager
def server_process(*args, name: str):
    """Starts `python -m model.serve ARGS --port 0` and yields (base URL, the log lines up to the "serving" line);
    on leaving, SIGTERM must stop it with exit status 0."""
    cmd = [sys.executable, "-m", "model.serve", *map(str, args), "--port", "0"]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        port, lines, deadline = None, [], time.time() + 120
        while port is None and time.time() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}: {''.join(lines[-20:])}")
            lines.append(line)
            m = re.search(rf"serving '{re.escape(name)}' on http://127\.0\.0\.1:(\d+)", line)
            port = int(m.group(1)) if m else None
        assert port, "no 'serving ... on' line"
        yield f"http://127.0.0.1:{port}", lines
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def test_server_process_serves_and_stops_on_sigterm():
    with server_process("--random-weights", "--preset", "tiny", "--device", "cpu", "--max-model-len", "256",
                        "--max-num-seqs", "4", "--model-name", "tiny-cli", name="tiny-cli") as (base, _):
        with urllib.request.urlopen(base + "/health", timeout=30) as r:
            assert json.load(r)["status"] == "ok"
        out = post(base + "/v1/completions", {"prompt": "cli", "max_tokens": 3, "temperature": 0})
        assert out["model"] == "tiny-cli" and out["usage"]["completion_tokens"] == 3


def test_server_process_from_a_checkpoint_with_fp8(tiny_model, tmp_path):
    """--checkpoint DIR --fp8: the server loads the saved weights and tokenizer, quantises the experts and Mamba
    projections on load (its log says which), and answers a greedy completion exactly as the offline
    LLM(DIR, fp8=True) does; the model's name is the checkpoint folder's."""
    ckpt = tmp_path / "tiny-ckpt"
    save_checkpoint(tiny_model, ckpt, dtype=torch.float32)
    byte_level_tokenizer().save(str(ckpt / "tokenizer.json"))
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    engine = {"max_model_len": 128, "max_num_seqs": 4, "block_size": 8, "max_num_batched_tokens": 64}
    offline = LLM(str(ckpt), fp8=True, device="cpu", dtype=torch.float32, backend="reference", **engine)
    bf16 = LLM(str(ckpt), device="cpu", dtype=torch.float32, backend="reference", **engine)
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    expected = offline.generate("def f(x):", params)[0]
    assert expected.token_ids != bf16.generate("def f(x):", params)[0].token_ids    # --fp8 shows in the output
    with server_process("--checkpoint", ckpt, "--fp8", "--device", "cpu", "--dtype", "float32", "--backend",
                        "reference", *(a for k, v in engine.items() for a in (f"--{k.replace('_', '-')}", v)),
                        name="tiny-ckpt") as (base, log):
        assert any("selective FP8: Mamba projections of layers [7], experts of MoE layers [2, 4]" in line
                   for line in log), "".join(log)
        out = post(base + "/v1/completions", {"prompt": "def f(x):", "max_tokens": 8, "temperature": 0,
                                              "ignore_eos": True})
    assert out["model"] == "tiny-ckpt"
    assert out["choices"][0]["text"] == expected.text
    assert out["usage"] == {"prompt_tokens": len(expected.prompt_token_ids), "completion_tokens": 8,
                            "total_tokens": len(expected.prompt_token_ids) + 8}
