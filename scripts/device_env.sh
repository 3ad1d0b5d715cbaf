# Sourced by the device scripts: $OUT, $PY, unbuffered Python, the wheels of .whl/ (nvidia-cutlass headers, the
# mamba-ssm baseline: packages the GPU machine lacks) on PYTHONPATH. Pass NK_COMMIT=<sha> so benchmark results name
# the tree they measured: the GPU machine's copy of the tree can sit in a stale clone, whose HEAD is not this tree's
# (session 6 found results labelled with an older commit); without it the bench reports that HEAD marked +dirty.
OUT=${OUT:-/tmp/nk-out}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
