#!/usr/bin/env bash
# The main job (`make demo`): look inside a few networks, then train, evaluate, export and
# predict on Fashion-MNIST, and draw the pictures. Offline: when the full Fashion-MNIST is not
# on this machine, the embedded real subset (fashion-mnist-mini) is used, and the demo says so.
#   bash recipes/demo.sh [OUTDIR]       (EPOCHS=N to train longer)
set -euo pipefail
OUT=${1:-runs/demo}
EPOCHS=${EPOCHS:-2}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
say() { printf '\n== %s\n' "$*" >&2; }

say "cnncli models (hand-built networks; no torch import)"
cnncli models
say "cnncli inspect alexnet (the seed's table, fig. 13-14)"
cnncli inspect alexnet
say "cnncli inspect googlenet --format markdown (inception modules as rows)"
cnncli inspect googlenet --format markdown | head -20
say "cnncli inspect timm/resnet18 --input 3x64x64 --depth 1"
cnncli inspect timm/resnet18 --input 3x64x64 --depth 1

DATA=fashion-mnist
if ! cnncli datasets --json | "$PY" -c 'import json,sys; d={x["name"]:x for x in json.load(sys.stdin)["datasets"]}; sys.exit(0 if d["fashion-mnist"]["found"] else 1)'; then
  DATA=fashion-mnist-mini
  echo "note: the full Fashion-MNIST is not on this machine (apt-get install dataset-fashion-mnist, or --data-dir); using the embedded real subset fashion-mnist-mini" >&2
fi

say "cnncli train recipes/models/fashion_fast.toml --data $DATA --epochs $EPOCHS"
rm -rf "$OUT/run"
cnncli train recipes/models/fashion_fast.toml --data "$DATA" --epochs "$EPOCHS" --augment flip \
  --out "$OUT/run" --json | tee "$OUT/train.json"

say "cnncli eval $OUT/run"
cnncli eval "$OUT/run" --plot "$OUT/confusion.png"

say "cnncli export $OUT/run --format onnx (verified against PyTorch)"
cnncli export "$OUT/run" --format onnx --out "$OUT/model.onnx" --json

say "cnncli predict on a few test images (PNG files written from the test split)"
"$PY" - "$DATA" "$OUT/images" <<'PY'
import sys
from pathlib import Path
from torchvision.io import write_png
from cnncli.data import load_dataset
splits = load_dataset(sys.argv[1], val_fraction=0.0)
out = Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
for i in range(6):
    name = splits.class_names[splits.test.labels[i]].replace("/", "-").replace(" ", "_")
    write_png(splits.test.images[i], str(out / f"test{i}_{name}.png"))
PY
cnncli predict "$OUT/model.onnx" "$OUT/images" --top-k 3

say "pictures: curves, confusion, the seed's fig. 8, first-layer filters, feature maps"
cnncli viz curves "$OUT/run" --out "$OUT/curves.png"
cnncli viz line-filters "$OUT/images/test0_"*.png --out "$OUT/seed_filters.png"
cnncli viz filters "$OUT/run" --layer conv1 --out "$OUT/filters.png"
cnncli viz feature-maps "$OUT/run" "$OUT/images/test0_"*.png --layer conv2_2 --out "$OUT/feature_maps.png"
say "done: everything is in $OUT"
