#!/usr/bin/env bash
# One-command GPU check (under 5 minutes on one GPU); runs reduced variants on a CPU-only machine.
#
#   experiments/bench/gpu_check.sh [--quick]        (or GPU_CHECK_QUICK=1)
#
# Parts, each timed (wall seconds in the summary table at the end):
#   detect    what JAX runs on; without a GPU: "no GPU found: running on CPU"
#   child     images/s training a MobileNetV2-like child of `mixed` (32x32x3, synthetic data,
#             batch 128; the second of 2 epochs, the first compiles)
#   latency   a jax latency table of `tiny` built here (`nas latency build`): entries, a sample
#   ray       a Ray search whose trials ask executor.gpus_per_trial 0.5: the platform JAX used
#             inside the trials (2 trials sharing the GPU); without GPUs, nas's one-line refusal
#   supernet  one FBNet supernet epoch on `mixed` (synthetic, 576 training images): s, images/s
#             (GPU_CHECK_SUPERNET_SPACE=tiny if compiling it takes too long)
# Without a GPU the child shrinks (batch 32, 288 images) and the supernet is `tiny`'s (the mixed
# one compiles for minutes on a CPU). --quick: every part on a one-stage 8x8x3 space
# (`gpu_check_micro`), a few hundred images and a table without calibration (under a minute
# on 2 CPU cores; tests/test_gpu_check.py runs it). Results: ${OUT:-a new temporary folder}:
# <part>.json, timings.tsv, the table, the Ray workdir, logs. Python: $PYTHON, else the
# checkout's .venv, else python3.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
QUICK="${GPU_CHECK_QUICK:-0}"
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi
OUT="${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
: > "$OUT/timings.tsv"
CHECK=("$PY" "$ROOT/experiments/bench/gpu_check.py")
NAS=("$PY" -m nas.cli)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# one compile cache for the parts of this run (they share small programs: initializers, stems)
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$OUT/jax-cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# timed NAME COMMAND...: runs the command, appends "NAME<TAB>seconds" to timings.tsv
timed() {
    local name="$1"; shift
    local start; start="$(now_ms)"
    "$@"
    local ms=$(( $(now_ms) - start ))
    printf '%s\t%d.%03d\n' "$name" $(( ms / 1000 )) $(( ms % 1000 )) >> "$OUT/timings.tsv"
}

DETECTED="$(timed detect "${CHECK[@]}" detect --out "$OUT")"
read -r PLATFORM DEVICES KIND <<< "$DETECTED"
if [[ "$PLATFORM" == "gpu" ]]; then
    echo "GPU found: $DEVICES x $KIND"
else
    echo "no GPU found: running on CPU ($DEVICES $PLATFORM device(s))"
fi
echo "results: $OUT (quick: $QUICK)"

if [[ "$QUICK" == 1 ]]; then
    "${CHECK[@]}" micro-space "$OUT/micro.yaml"
    CHILD=(--space "$OUT/micro.yaml" --batch 16 --images 200)
    SUPERNET=(--space "$OUT/micro.yaml" --batch 8 --images 200)
    LATENCY=(--space "$OUT/micro.yaml" --calibration-samples 0 --warmup 1 --min-reps 3
             --min-seconds 0 --rounds 1 --extra-rounds 0)
    RAY_CANDIDATES=1
elif [[ "$PLATFORM" == "gpu" ]]; then
    CHILD=(--space mixed --batch 128 --images 8000)
    SUPERNET=(--space "${GPU_CHECK_SUPERNET_SPACE:-mixed}" --batch 64 --images 800)
    LATENCY=(--space tiny --calibration-samples 4 --warmup 5 --min-reps 20 --min-seconds 0.02
             --rounds 2 --extra-rounds 1)
    RAY_CANDIDATES=2
else  # CPU: compiling the mixed supernet takes minutes here; tiny's takes seconds
    CHILD=(--space mixed --batch 32 --images 400)
    SUPERNET=(--space "${GPU_CHECK_SUPERNET_SPACE:-tiny}" --batch 32 --images 400)
    LATENCY=(--space tiny --calibration-samples 4 --warmup 2 --min-reps 10 --min-seconds 0.01
             --rounds 2 --extra-rounds 0)
    RAY_CANDIDATES=1
fi

# the slowest part (the supernet's compilation) last: the others are in $OUT if it is cut short
timed child "${CHECK[@]}" child "${CHILD[@]}" --out "$OUT"

# never into latency_tables/: the table goes to $OUT
build_table() {
    "${NAS[@]}" latency build --backend jax --out "$OUT/latency-jax.json" --no-progress \
        "${LATENCY[@]}" > "$OUT/latency.log" 2>&1 || { cat "$OUT/latency.log" >&2; return 1; }
    "${CHECK[@]}" latency-report "$OUT/latency-jax.json" --out "$OUT"
}
timed latency build_table

ray_trial() {
    "${CHECK[@]}" ray-config "$OUT/ray.yaml" --gpus 0.5 --candidates "$RAY_CANDIDATES"
    local rc=0
    "${NAS[@]}" search "$OUT/ray.yaml" --workdir "$OUT/ray" --json --no-drift-check \
        > "$OUT/ray.log" 2> "$OUT/ray.err" || rc=$?
    if [[ "$rc" == 0 ]]; then
        "${CHECK[@]}" ray-report --out "$OUT" --workdir "$OUT/ray"
    elif [[ "$rc" == 2 && "$PLATFORM" != "gpu" ]]; then
        "${CHECK[@]}" ray-report --out "$OUT" --refused "$OUT/ray.err"
    else
        cat "$OUT/ray.err" >&2
        return "$rc"
    fi
}
timed ray ray_trial

timed supernet "${CHECK[@]}" supernet "${SUPERNET[@]}" --out "$OUT"

echo
echo "== gpu_check summary ($PLATFORM, $KIND$([[ "$QUICK" == 1 ]] && echo ", quick")) =="
"${CHECK[@]}" summary "$OUT"
