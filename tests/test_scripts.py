"""The GPU machine's scripts (scripts/) load here, without a GPU: every Python script compiles and its module-level
imports resolve (our ops, the bench helpers, the names it takes from them), and every shell script parses. A
script that breaks on a renamed op would otherwise first fail on the device, where a call costs minutes of a
30-minute budget. Only the import statements run, in a child process: some scripts do their work at module level
(serve_host_step.py patches the model runner), which must not happen inside the test session."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY_SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))
SH_SCRIPTS = sorted((ROOT / "scripts").glob("*.sh"))


def module_imports(path: Path) -> str:
    """The script's top-level import statements, as source (compiling the whole script on the way)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    compile(tree, str(path), "exec")
    return "\n".join(ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))


def test_python_scripts_compile_and_their_imports_resolve():
    probe = "import traceback\nfailed = []\n"
    for path in PY_SCRIPTS:
        probe += (f"try:\n    exec({module_imports(path)!r}, {{}})\n"
                  f"except Exception:\n    failed.append(({path.name!r}, traceback.format_exc(limit=1)))\n")
    probe += "print('\\n'.join(f'{name}: {tb}' for name, tb in failed))\nraise SystemExit(len(failed))\n"
    run = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


@pytest.mark.parametrize("path", SH_SCRIPTS, ids=lambda p: p.name)
def test_shell_script_parses(path):
    run = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_the_scripts_are_found():
    assert len(PY_SCRIPTS) >= 10 and len(SH_SCRIPTS) >= 5, (PY_SCRIPTS, SH_SCRIPTS)
