# Sourced by the device scripts: $OUT, $PY, unbuffered Python, the wheels of .whl/ (nvidia-cutlass headers, the
# mamba-ssm baseline: packages the GPU machine lacks) on PYTHONPATH, and NK_COMMIT (a snapshot without .git: pass
# NK_COMMIT=<sha> so benchmark results name the tree they measured).
OUT=${OUT:-/tmp/nk-out}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export NK_COMMIT=${NK_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null)}
