#!/usr/bin/env bash
# Every CUDA path of cnncli, one line each: PASS / FAIL / SKIP, the path, a figure.
#
#   bash bench/gpu_check.sh                       # on a machine with a GPU: under five minutes
#   PYTHON=.venv/bin/python bash bench/gpu_check.sh
#
# The paths: training in float32, AMP bf16 and AMP fp16 (GradScaler), channels-last weights,
# pinned host memory, --compile, --workers (where train has it), torchrun with NCCL on every GPU,
# and on the GPU: lr-find with --amp auto, eval --tta multicrop, predict. Each is a real cnncli
# command on generated data (a few thousand 32x32 images, one epoch); its figure is what that
# command reported (train images/s, test top-1, the precision it chose).
#
# On a machine without a CUDA GPU it says so and exits 0. GPU_CHECK_DEVICE=cpu runs the same
# command lines on the CPU (small data, the GPU-only paths SKIP): a check of this script itself.
# Exit status 1 if any path FAILed. Settings: GPU_CHECK_DATA, GPU_CHECK_MODEL, GPU_CHECK_BATCH
# (lr-find's batch), GPU_CHECK_TIMEOUT (seconds per path).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
MODEL=${GPU_CHECK_MODEL:-typical_cnn}
if [[ "$DEVICE" == cpu ]]; then
    DATA=${GPU_CHECK_DATA:-synthetic:n=256,n_test=64,classes=4,size=32}
    BATCH=${GPU_CHECK_BATCH:-16}
else
    DATA=${GPU_CHECK_DATA:-synthetic:n=8192,n_test=1024,classes=10,size=32}
    BATCH=${GPU_CHECK_BATCH:-128}
fi
LIMIT=${GPU_CHECK_TIMEOUT:-150}
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$work"' EXIT
failed=0
start=$SECONDS

info=$("$PYTHON" - <<'EOF'
import torch
n = torch.cuda.device_count() if torch.cuda.is_available() else 0
if n:
    p = torch.cuda.get_device_properties(0)
    print(n, f"{p.name}, capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB; "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
else:
    print(0, f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}")
EOF
) || { echo "gpu_check: FAIL: $PYTHON cannot import torch"; exit 1; }
gpus=${info%% *}
about=${info#* }
if [[ "$DEVICE" != cpu ]]; then
    if [[ "$gpus" == 0 ]]; then
        echo "gpu_check: no CUDA GPU on this machine ($about); nothing to check"
        exit 0
    fi
    echo "gpu_check: $gpus GPU(s): $about"
else
    echo "gpu_check: GPU_CHECK_DEVICE=cpu: the command lines on the CPU ($about)"
fi
echo "gpu_check: model $MODEL, data $DATA"

say() { printf '%-4s  %-30s %s\n' "$1" "$2" "$3"; }  # STATUS PATH FIGURE
last_error() { grep -v '^[[:space:]]*$' "$work/$1.err" | grep -v '^note:' | tail -n 1 | cut -c1-180; }

# run NAME COMMAND...: stdout in $work/NAME.out, stderr in $work/NAME.err; returns the exit status
run() {
    local name=$1
    shift
    timeout "$LIMIT" "$@" >"$work/$name.out" 2>"$work/$name.err"
}

# figure NAME: the figures of a --json document on stdout (train, eval or lr-find)
figure() {
    "$PYTHON" - "$work/$1.out" <<'EOF'
import json, sys
text = open(sys.argv[1]).read().strip()
try:
    d, lines = json.loads(text), 1
except json.JSONDecodeError:  # JSON lines (predict)
    d, lines = json.loads(text.splitlines()[0]), len(text.splitlines())
out = []
if "suggestions" in d:  # lr-find
    out.append(", ".join(f"{k} {v['lr']:.2g}" for k, v in d["suggestions"].items()) + f" after {d['steps_run']} steps")
elif "tta" in d:  # eval
    out.append(f"top-1 {d['top1']:.3f} with tta {d['tta']}, {d['images_per_second']:.0f} img/s")
elif "top" in d:  # predict
    out.append(f"{lines} images, the first: {d['top'][0]['class']} {d['top'][0]['prob']:.3f}")
else:  # train
    out.append(f"{d.get('images_per_second') or 0:.0f} train img/s")
    if d.get("test_top1") is not None:
        out.append(f"test top-1 {d['test_top1']:.3f}")
if d.get("precision"):
    out.append(f"precision {d['precision']}")
print(", ".join(out))
EOF
}

# report NAME STATUS: PASS with the figure, SKIP (exit 2: cnncli refused, e.g. no fast bf16), FAIL
report() {
    local name=$1 rc=$2 label=${3:-$1}
    if [[ $rc == 0 ]]; then
        say PASS "$label" "$(figure "$name" 2>&1)"
    elif [[ $rc == 2 ]]; then
        say SKIP "$label" "$(last_error "$name")"
    else
        [[ $rc == 124 ]] && echo "timed out after ${LIMIT}s" >>"$work/$name.err"
        say FAIL "$label" "exit $rc: $(last_error "$name")"
        failed=1
    fi
}

# train_path NAME ARGS...: one epoch of `cnncli train` on the device
train_path() {
    local name=$1
    shift
    run "$name" "$PYTHON" -m cnncli train "$MODEL" --data "$DATA" --epochs 1 --device "$DEVICE" --quiet --json \
        --log none --out "$work/run-$name" "$@"
    report "$name" $? "train $*"
}

train_path fp32 --amp off
train_path bf16 --amp bf16
train_path fp16 --amp fp16

# --compile: a fallback to eager is a failure of the path, not a pass
if [[ "$DEVICE" == cpu ]]; then
    say SKIP "train --compile --amp auto" "not in the CPU check of this script (inductor's C++ build takes minutes)"
else
    run compile "$PYTHON" -m cnncli train "$MODEL" --data "$DATA" --epochs 1 --device "$DEVICE" --quiet --json \
        --log none --out "$work/run-compile" --compile --amp auto
    rc=$?
    if [[ $rc == 0 ]] && grep -q "running eagerly" "$work/compile.err"; then
        say FAIL "train --compile --amp auto" "fell back to eager: $(grep 'running eagerly' "$work/compile.err" | head -n 1 | cut -c1-160)"
        failed=1
    else
        report compile $rc "train --compile --amp auto"
    fi
fi

# channels-last: the weights cnncli trains are NHWC on the device, and NHWC is not slower than NCHW
run channels_last "$PYTHON" - "$MODEL" "$DEVICE" <<'EOF'
import sys, time, torch
from cnncli.engine.device import use_channels_last
from cnncli.models.registry import build_model
name, device = sys.argv[1], torch.device(sys.argv[2])
def speed(model, x):
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for _ in range(3):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return 10 * len(x) / (time.perf_counter() - t)
built = build_model(name, num_classes=10)
model = built.module.to(device).eval()
x = torch.randn(256 if device.type == "cuda" else 16, *built.info.input_size, device=device)
nchw = speed(model, x)
use_channels_last(model, device)
weights = [p for p in model.parameters() if p.dim() == 4]
assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights), "weights not NHWC"
nhwc = speed(model, x)
print(f'{{"note": "channels-last {nhwc:.0f} img/s, contiguous {nchw:.0f} img/s ({nhwc / nchw:.2f}x)"}}')
EOF
rc=$?
if [[ $rc == 0 ]]; then say PASS "channels-last weights" "$(sed -E 's/.*"note": "([^"]*)".*/\1/' "$work/channels_last.out")"; else report channels_last $rc "channels-last weights"; fi

# pinned host memory: a uint8 batch copied to the GPU from pinned and from pageable memory
if [[ "$DEVICE" == cpu ]]; then
    say SKIP "pinned memory" "needs a CUDA GPU"
else
    run pinned "$PYTHON" - <<'EOF'
import time, torch
batch = torch.randint(0, 256, (4096, 3, 64, 64), dtype=torch.uint8)
def rate(src):
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        dst = src.to("cuda", non_blocking=True)
    torch.cuda.synchronize()
    assert torch.equal(dst.cpu(), batch)
    return 20 * batch.numel() / (time.perf_counter() - t) / 1e9
pageable, pinned = rate(batch), rate(batch.pin_memory())
print(f"host to GPU: pinned {pinned:.1f} GB/s, pageable {pageable:.1f} GB/s")
EOF
    rc=$?
    if [[ $rc == 0 ]]; then say PASS "pinned memory" "$(cat "$work/pinned.out")"; else report pinned $rc "pinned memory"; fi
fi

# --workers: the streaming data path, decoding in DataLoader workers (where train has the option)
if "$PYTHON" -m cnncli train --help 2>/dev/null | grep -q -- "--workers"; then
    run folder "$PYTHON" -m cnncli datasets show "$DATA" -k 40 --export "$work/folder-flat" --out "$work/grid.png"
    "$PYTHON" - "$work/folder-flat" "$work/folder" <<'EOF'
import pathlib, shutil, sys
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for f in src.glob("*.png"):  # <class>-<i>.png -> <class>/<i>.png, the layout imagefolder reads
    cls, _, i = f.stem.rpartition("-")
    (dst / cls).mkdir(parents=True, exist_ok=True)
    shutil.copy(f, dst / cls / f"{i}.png")
EOF
    run workers "$PYTHON" -m cnncli train "$MODEL" --data "imagefolder:$work/folder" --epochs 1 --device "$DEVICE" \
        --quiet --json --log none --out "$work/run-workers" --workers 2
    report workers $? "train --workers 2 (imagefolder)"
else
    say SKIP "train --workers" "this cnncli's train has no --workers option"
fi

# torchrun: one process per GPU, gradients over NCCL
if [[ "$DEVICE" == cpu ]]; then
    say SKIP "torchrun NCCL" "needs CUDA GPUs"
elif (( gpus < 2 )); then
    say SKIP "torchrun NCCL" "needs 2 or more GPUs (NCCL refuses two ranks on one GPU); this machine has $gpus"
else
    run torchrun "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$gpus" -m cnncli train "$MODEL" \
        --data "$DATA" --epochs 1 --device cuda --quiet --json --log none --out "$work/run-torchrun"
    report torchrun $? "torchrun NCCL x$gpus"
fi

# the inference paths on the device, on the float32 run trained above
if [[ -f "$work/run-fp32/model.safetensors" ]]; then
    run eval_tta "$PYTHON" -m cnncli eval "$work/run-fp32" --device "$DEVICE" --tta multicrop --json
    report eval_tta $? "eval --tta multicrop"
    run samples "$PYTHON" -m cnncli datasets show "$DATA" --split test -k 2 --export "$work/samples" --out "$work/samples.png"
    run predict "$PYTHON" -m cnncli predict "$work/run-fp32" "$work/samples" --device "$DEVICE" --tta flip --json
    report predict $? "predict --tta flip"
else
    say SKIP "eval / predict" "no float32 run to evaluate (see its line above)"
fi
run lr_find "$PYTHON" -m cnncli lr-find "$MODEL" --data "$DATA" --device "$DEVICE" --amp auto --steps 60 \
    --batch-size "$BATCH" --json
report lr_find $? "lr-find --amp auto"

echo "gpu_check: $((SECONDS - start)) s, $([[ $failed == 0 ]] && echo 'no failures' || echo 'FAILURES above')"
exit $failed
