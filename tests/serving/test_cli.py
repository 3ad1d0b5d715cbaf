"""`python -m model.serve`: argument errors, and a real server process answering on loopback, stopped by SIGTERM."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

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


def test_server_process_serves_and_stops_on_sigterm():
    cmd = [sys.executable, "-m", "model.serve", "--random-weights", "--preset", "tiny", "--device", "cpu",
           "--port", "0", "--max-model-len", "256", "--max-num-seqs", "4", "--model-name", "tiny-cli"]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        port, deadline = None, time.time() + 120
        while port is None and time.time() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}")
            m = re.search(r"serving 'tiny-cli' on http://127\.0\.0\.1:(\d+)", line)
            port = int(m.group(1)) if m else None
        assert port, "no 'serving ... on' line"
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(base + "/health", timeout=30) as r:
            assert json.load(r)["status"] == "ok"
        body = json.dumps({"prompt": "cli", "max_tokens": 3, "temperature": 0}).encode()
        req = urllib.request.Request(base + "/v1/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            out = json.load(r)
        assert out["model"] == "tiny-cli" and out["usage"]["completion_tokens"] == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
