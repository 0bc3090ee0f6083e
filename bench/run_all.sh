#!/usr/bin/env bash
# The benchmark suite in one command (`make bench` runs it too).
#
#   bash bench/run_all.sh            # every bench; time to accuracy when its recipe exists
#   bash bench/run_all.sh --quick    # a smoke test of the scripts (minutes, figures meaningless)
#   SKIP_TTA=1 bash bench/run_all.sh # leave out time to accuracy (~10 minutes on 2 cores)
#
# Every figure is one JSON line on stdout, also collected in bench/out/figures-<time>.jsonl;
# progress goes to stderr. Run it on a quiet machine: every figure is a wall-clock time.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
QUICK=""
if [[ "${1:-}" == "--quick" ]]; then QUICK=1; fi

mkdir -p bench/out
figures="bench/out/figures-$(date +%Y%m%d-%H%M%S).jsonl"
failed=()

bench() {  # bench NAME ARGS...: run one script, keep going if it fails
    local script="bench/$1.py"; shift
    if [[ ! -f "$script" ]]; then echo "== $script: not present, skipped" >&2; return; fi
    echo "== $script $*" >&2
    local start=$SECONDS
    if "$PYTHON" "$script" "$@" | tee -a "$figures"; then
        echo "== $script: $((SECONDS - start)) s" >&2
    else
        echo "== $script FAILED" >&2
        failed+=("$script")
    fi
}

if [[ -n "$QUICK" ]]; then
    bench train_throughput --quick
    bench eval_throughput --quick
    bench cli_latency --runs 2
    bench onnx_vs_eager --models lenet5 --rounds 1 --seconds 0.5
    bench int8_vs_fp32 --models typical_cnn --max-samples 500 --rounds 1 --seconds 0.2
    bench predict_startup --runs 1
    bench explain_speed --images 2 --rounds 1 --methods gradcam
    bench photo_pipeline --photos 40 --steps 3 --batch-size 4 --img-size 64 --repeats 1 --workers 1
    if [[ -f recipes/fashion_mnist_best.toml && -z "${SKIP_TTA:-}" ]]; then
        bench time_to_accuracy recipes/fashion_mnist_best.toml --set epochs=1 --set max_samples=2000
    fi
else
    bench train_throughput
    bench eval_throughput
    bench cli_latency
    bench onnx_vs_eager
    bench int8_vs_fp32
    bench predict_startup
    bench explain_speed
    bench photo_pipeline --photos 3000 30000 --cache
    if [[ -f recipes/fashion_mnist_best.toml && -z "${SKIP_TTA:-}" ]]; then
        bench time_to_accuracy recipes/fashion_mnist_best.toml
    fi
fi

echo "== figures in $figures" >&2
if (( ${#failed[@]} )); then
    echo "== failed: ${failed[*]}" >&2
    exit 1
fi
