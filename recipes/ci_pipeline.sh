#!/usr/bin/env bash
# The subcommands chained the way a CI job uses them: train -> eval -> export (verified) ->
# predict, each step checking the JSON the previous one printed. Offline and quick: it trains
# on generated data unless DATA is set (e.g. DATA=fashion-mnist EPOCHS=5).
#   bash recipes/ci_pipeline.sh [WORKDIR]
set -euo pipefail
WORK=${1:-$(mktemp -d)}
DATA=${DATA:-synthetic:n=1200,n_test=300,classes=4}
MODEL=${MODEL:-lenet5}
EPOCHS=${EPOCHS:-3}
PY=${PYTHON:-python3}
mkdir -p "$WORK"
# read one key of a JSON document on stdin (no jq needed)
field() { "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(d[sys.argv[1]])' "$1"; }

cnncli train "$MODEL" --data "$DATA" --epochs "$EPOCHS" --out "$WORK/run" --seed 1 --quiet --json > "$WORK/train.json"
test_top1=$(field test_top1 < "$WORK/train.json")
"$PY" -c "import sys; t=float(sys.argv[1]); sys.exit(0 if t > 0.5 else 'test top-1 %.3f is not above 0.5' % t)" "$test_top1"
echo "train: test top-1 $test_top1" >&2

cnncli eval "$WORK/run" --json > "$WORK/eval.json"
eval_top1=$(field top1 < "$WORK/eval.json")
"$PY" -c "import sys; a,b=map(float,sys.argv[1:]); sys.exit(0 if abs(a-b)<1e-9 else 'eval %.4f != train %.4f' % (a,b))" "$eval_top1" "$test_top1"
echo "eval: top-1 $eval_top1 (same as train reported)" >&2

cnncli export "$WORK/run" --format onnx --out "$WORK/model.onnx" --json > "$WORK/export.json"
[ "$(field verified < "$WORK/export.json")" = "True" ] || { echo "export not verified" >&2; exit 1; }
echo "export: $(field max_abs_diff < "$WORK/export.json") max abs diff" >&2

# a few test images as PNG files, predicted through the exported ONNX file
"$PY" - "$DATA" "$WORK/images" <<'PY'
import sys
from pathlib import Path
from torchvision.io import write_png
from cnncli.data import load_dataset
splits = load_dataset(sys.argv[1], val_fraction=0.0)
out = Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
for i in range(4):
    write_png(splits.test.images[i], str(out / f"test{i}_{splits.test.labels[i].item()}.png"))
PY
cnncli predict "$WORK/model.onnx" "$WORK/images" --json --top-k 2 > "$WORK/predict.jsonl"
lines=$(wc -l < "$WORK/predict.jsonl")
[ "$lines" -eq 4 ] || { echo "predict gave $lines lines, expected 4" >&2; exit 1; }
"$PY" -c 'import json,sys; [json.loads(l)["top"][0]["class"] for l in open(sys.argv[1])]' "$WORK/predict.jsonl"
echo "predict: $lines images" >&2
echo "pipeline ok: $WORK" >&2
