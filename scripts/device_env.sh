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

# Build the extension with this machine's torch (no network: no build isolation, no dependency resolution); the log
# goes to $1, its tail is printed on failure.
nk_build() {
  MAX_JOBS=${MAX_JOBS:-16} $PY -m pip install --no-build-isolation --no-deps --no-index -e . >"$1" 2>&1 \
    || { tail -40 "$1"; echo "BUILD FAILED"; return 1; }
}
# nk_build unless the extension already imports (a warm machine keeps its last build).
nk_build_if_missing() { $PY -c "import nemotron_kernels._C" 2>/dev/null || nk_build "$OUT/build.log"; }
# ncu's --section flags: $NCU_SECTIONS when set, else the arguments.
ncu_sections() { local s; for s in ${NCU_SECTIONS:-$*}; do printf -- ' --section %s' "$s"; done; }
