"""python -m bench [op ...] [--quick] [--cpu] [--out DIR]

Runs bench/bench_<op>.py for the ops given (default: all), prints each row as it is measured, and writes
<out>/<op>-<UTC timestamp>.json (rows + environment), .md (the table) and .png (a chart) per op.
Without a GPU it measures nothing and exits 0, unless --cpu asks for a CPU smoke run of the benchmark code."""
import argparse
import datetime
import importlib
import json
import os
import pathlib
import pkgutil
import subprocess
import sys

import torch

from . import harness

HERE = pathlib.Path(__file__).resolve().parent


def available_ops() -> list[str]:
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("bench_"))


def _commit() -> str | None:
    """$NK_COMMIT when set (the GPU machine's copy of the tree can sit in a stale clone of the repository), else the
    HEAD of the checkout holding this bench, marked "+dirty" when tracked files differ from it; None outside a
    checkout (an unversioned copy must not report the HEAD of some repository above it)."""
    if os.environ.get("NK_COMMIT"):
        return os.environ["NK_COMMIT"]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True, timeout=10).stdout

    try:
        out = git("rev-parse", "--show-toplevel", "--short", "HEAD").split()
        if len(out) != 2 or pathlib.Path(out[0]).resolve() != HERE.parent.resolve():
            return None
        return out[1] + ("+dirty" if git("status", "--porcelain", "--untracked-files=no").strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _environment(device: torch.device) -> dict:
    commit = _commit()
    return dict(device=harness.device_name(device), torch=torch.__version__, cuda=torch.version.cuda, commit=commit,
                l2_bytes=harness.L2_BYTES, ceilings=harness.CEILINGS)


def main(argv=None) -> int:
    ops = available_ops()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ops", nargs="*", help=f"ops to benchmark (default: all of {', '.join(ops)})")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repetitions")
    parser.add_argument("--cpu", action="store_true", help="smoke-run on the CPU (perf_counter, no GPU numbers)")
    parser.add_argument("--kernels", action="store_true",
                        help="also list what one call of each variant runs (torch.profiler): kernels by time")
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for JSON / markdown / PNG")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.ops) - set(ops))
    if unknown:
        parser.error(f"no benchmark for {unknown}; available: {ops}")
    if not args.cpu and not torch.cuda.is_available():
        print("[bench] no CUDA device visible: nothing measured (the benchmarks time GPU kernels; "
              "`python -m bench --cpu` smoke-runs the benchmark code on the CPU).")
        return 0

    device = torch.device("cpu" if args.cpu else "cuda")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    env = _environment(device)
    print(f"[bench] {env['device']}, torch {env['torch']}, commit {env['commit']}, quick={args.quick}")
    for op in args.ops or ops:
        torch.manual_seed(0)
        bench = harness.Bench(op, device.type, args.quick, args.kernels)
        print(f"[bench] {op}")
        importlib.import_module(f"bench.bench_{op}").run(bench)
        base = out / f"{op}-{stamp}"
        table = bench.markdown()
        doc = dict(op=op, timestamp=stamp, quick=args.quick, timing=harness.TIMING_NOTE,
                   **env, rows=bench.rows)
        base.with_suffix(".json").write_text(json.dumps(doc, indent=1))
        base.with_suffix(".md").write_text(f"# {op} — {env['device']}, torch {env['torch']}, {stamp} UTC"
                                           f"{' (quick)' if args.quick else ''}\n\n{table}\n")
        charted = bench.chart(base.with_suffix(".png"))
        print(f"\n{table}\n\n[bench] wrote {base}.json, .md{', .png' if charted else ' (no matplotlib: no chart)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
