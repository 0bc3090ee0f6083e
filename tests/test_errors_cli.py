"""Every bad input a user can give, through the real command line.

Each case checks the whole contract: the exit code (2 for bad usage or input, 1 for a runtime
failure), exactly one non-empty line on stderr starting with "error:", no traceback, a fragment
that tells the user what was wrong or what to do, nothing on stdout, and every file that was on
disk before the command unchanged afterwards (hashed before and after).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.data import registry

DATA = "synthetic:n=64,n_test=16,classes=2,size=28"
EMBEDDED = Path(registry.__file__).parent / "embedded"
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def tree_hashes(*roots: Path) -> dict[str, str]:
    """sha256 of every file under the given files/folders (the state that must not change)."""
    hashes = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            hashes[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def assert_one_line_error(result, code: int, *fragments: str) -> str:
    stderr = result.stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert result.exit_code == code, (result.exit_code, stderr)
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert result.stdout == "", result.stdout
    return lines[0]


def fails_cleanly(args, code, *fragments, untouched=()):
    """Run the CLI; check the one-line contract and that `untouched` files/folders did not change."""
    before = tree_hashes(*untouched)
    line = assert_one_line_error(cli(*args), code, *fragments)
    assert tree_hashes(*untouched) == before, "a file that was on disk changed"
    return line


@pytest.fixture
def run_dir(tiny_run):
    """A small real run: lenet5 on 2 synthetic classes (DATA), one epoch; conftest's session run,
    read-only: every case here leaves it alone."""
    return tiny_run


@pytest.fixture
def ckpt(run_dir):
    return run_dir / "model.safetensors"


@pytest.fixture
def bad_files(tmp_path, ckpt):
    """Broken copies of a good checkpoint, and the same weights without cnncli metadata."""
    from safetensors.torch import load_file, save_file

    data = ckpt.read_bytes()
    files = {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "garbage": os.urandom(4096),
        "header_cut": data[:20],
    }
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.safetensors"
        paths[name].write_bytes(content)
    paths["foreign"] = tmp_path / "foreign.safetensors"
    save_file(load_file(str(ckpt)), str(paths["foreign"]), metadata={"format": "pt"})
    return paths


# ------------------------------------------------------------------------------ names
def test_unknown_model_suggests_the_closest_names(tmp_path):
    fails_cleanly(["train", "lenett5", "--data", DATA, "--out", tmp_path / "r"], 2,
                  "unknown model 'lenett5'", "did you mean 'lenet5'", "cnncli models")
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
    fails_cleanly(["inspect", "resnet181"], 2, "unknown model 'resnet181'", "'resnet18'")


def test_unknown_dataset_suggests_the_closest_names():
    fails_cleanly(["train", "lenet5", "--data", "fashon-mnist"], 2,
                  "unknown dataset 'fashon-mnist'", "did you mean 'fashion-mnist'", "cnncli datasets")


# ------------------------------------------------------------------------------ dataset files
def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    line = fails_cleanly(["train", "lenet5", "--data", "fashion-mnist", "--data-dir", empty], 2,
                         "fashion-mnist not found", str(empty), "--data-dir DIR", "--download")
    assert "CNNCLI_DATA" in line
    fails_cleanly(["train", "lenet5", "--data", "cifar10", "--data-dir", empty], 2,
                  "cifar10 not found", str(empty), "cifar-10-batches-py")


def _fashion_copy(folder: Path) -> Path:
    folder.mkdir()
    for f in EMBEDDED.glob("*.gz"):
        shutil.copy(f, folder / f.name)
    return folder


@pytest.mark.parametrize("damage,fragments", [
    ("truncated", ["train-images-idx3-ubyte.gz", "truncated", "fetch it again"]),
    ("bad_magic", ["train-labels-idx1-ubyte.gz", "not an IDX file"]),
    ("cut_gzip", ["t10k-images-idx3-ubyte.gz", "truncated gzip", "fetch it again"]),
    ("not_gzip", ["t10k-labels-idx1-ubyte.gz", "not a valid gzip file"]),
])
def test_truncated_or_corrupt_idx_files(tmp_path, damage, fragments):
    folder = _fashion_copy(tmp_path / "fm")
    images = gzip.decompress((folder / "train-images-idx3-ubyte.gz").read_bytes())
    if damage == "truncated":
        (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(images[: len(images) // 3]))
    elif damage == "bad_magic":
        labels = gzip.decompress((folder / "train-labels-idx1-ubyte.gz").read_bytes())
        (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x01\x02" + labels[2:]))
    elif damage == "cut_gzip":
        raw = (folder / "t10k-images-idx3-ubyte.gz").read_bytes()
        (folder / "t10k-images-idx3-ubyte.gz").write_bytes(raw[: len(raw) // 2])
    else:
        (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"this is no gzip stream at all")
    fails_cleanly(["train", "lenet5", "--data", "fashion-mnist", "--data-dir", folder, "--out", tmp_path / "r"],
                  2, *fragments, untouched=[folder])


# ------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("which,fragment", [
    ("truncated", "truncated"),
    ("empty", "not a safetensors file (only 0 bytes)"),
    ("garbage", "not a safetensors file or truncated"),
    ("header_cut", "not a safetensors file or truncated"),
])
@pytest.mark.parametrize("command", ["eval", "export", "predict", "train-weights"])
def test_broken_safetensors_files(bad_files, which, fragment, command, tmp_path, run_dir):
    path = bad_files[which]
    image = run_dir / "curves.png"  # any real image; the checkpoint fails first
    args = {
        "eval": ["eval", path],
        "export": ["export", path, "--out", tmp_path / "x.onnx"],
        "predict": ["predict", path, image],
        "train-weights": ["train", "lenet5", "--data", DATA, "--weights", path, "--out", tmp_path / "r"],
    }[command]
    fails_cleanly(args, 2, str(path), fragment, untouched=[path, run_dir])
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("command", ["eval", "export", "predict", "inspect"])
def test_safetensors_from_another_tool_says_what_is_missing_and_how_to_use_it(bad_files, command, run_dir):
    path = bad_files["foreign"]
    args = {"eval": ["eval", path], "export": ["export", path], "predict": ["predict", path, run_dir / "curves.png"],
            "inspect": ["inspect", path]}[command]
    fails_cleanly(args, 2, "no cnncli metadata", "--weights FILE", "model name", untouched=[path])


def test_plain_weights_work_the_way_the_message_says(bad_files, tmp_path):
    # the advice of the previous test is real: a registry name plus --weights takes the file
    result = cli("eval", "lenet5", "--weights", bad_files["foreign"], "--data", DATA, "--json")
    assert result.exit_code == 0, result.stderr


def test_checkpoint_of_another_network(ckpt, tmp_path):
    fails_cleanly(["train", "alexnet", "--data", DATA, "--weights", ckpt, "--out", tmp_path / "r"], 2,
                  "do not fit the network", "C1.conv.weight", untouched=[ckpt])


def test_checkpoint_with_other_classes(ckpt, tmp_path):
    fails_cleanly(["train", "lenet5", "--data", "synthetic:n=60,classes=3", "--weights", ckpt,
                   "--out", tmp_path / "r"], 2, "do not fit", "out.weight", "(2, 84) in the file",
                  untouched=[ckpt])
    fails_cleanly(["eval", "lenet5", "--weights", ckpt, "--data", "synthetic:n=60,classes=3"], 2,
                  "do not fit", untouched=[ckpt])


def test_checkpoint_asked_for_an_input_size_it_does_not_take(ckpt):
    fails_cleanly(["inspect", ckpt, "--input", "1x8x8"], 2, "too small", untouched=[ckpt])


# ------------------------------------------------------------------------------ input size
def test_img_size_too_small_for_the_network(tmp_path):
    line = fails_cleanly(["train", "alexnet", "--data", DATA, "--img-size", 8, "--out", tmp_path / "r"], 2,
                         "too small", "3x8x8")
    assert "kernel" in line
    assert not (tmp_path / "r" / "config.toml").exists()


def test_img_size_too_small_for_a_finetuned_backbone(ckpt, tmp_path):
    fails_cleanly(["finetune", ckpt, "--data", DATA, "--img-size", 8, "--out", tmp_path / "r"], 2,
                  "too small", untouched=[ckpt])


# ------------------------------------------------------------------------------ images
def _image_folder(root: Path, png: bytes) -> Path:
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            (root / cls / f"{i}.png").write_bytes(png)
    return root


def test_image_file_that_is_not_an_image(tmp_path, run_dir, ckpt):
    png = (run_dir / "curves.png").read_bytes()
    folder = _image_folder(tmp_path / "imgs", png)
    (folder / "b" / "fake.png").write_text("not an image, only text with a .png name")
    fails_cleanly(["train", "lenet5", "--data", f"imagefolder:{folder}", "--out", tmp_path / "r"], 2,
                  "fake.png", "not a PNG", untouched=[folder])
    # a corrupt PNG (one flipped byte in its compressed data) is refused, not a crash
    broken = bytearray(png)
    broken[len(broken) // 2] ^= 0x55
    (folder / "b" / "fake.png").write_bytes(bytes(broken))
    fails_cleanly(["train", "lenet5", "--data", f"imagefolder:{folder}", "--out", tmp_path / "r"], 2,
                  "fake.png", "cannot decode", untouched=[folder])
    # predict of that one file: its one line, exit 2
    fails_cleanly(["predict", ckpt, folder / "b" / "fake.png"], 2, "fake.png", untouched=[folder, ckpt])


def test_empty_image_folder_and_class_folder_without_images(tmp_path, run_dir):
    (tmp_path / "empty").mkdir()
    fails_cleanly(["train", "lenet5", "--data", f"imagefolder:{tmp_path / 'empty'}"], 2,
                  "no class sub-folders", "PATH/<class>/")
    folder = _image_folder(tmp_path / "imgs", (run_dir / "curves.png").read_bytes())
    (folder / "c").mkdir()
    fails_cleanly(["train", "lenet5", "--data", f"imagefolder:{folder}"], 2, "class folder", "/c holds no images")


# ------------------------------------------------------------------------------ option values
@pytest.mark.parametrize("args,fragment", [
    # --epochs 0: refused by train's flag, the head stage alone in finetune (test_finetune)
    (["--epochs", "-3"], ("'--epochs' / '-e': must be in [", "got -3")),
    (["--batch-size", "0"], "must be in [1, 65536], got 0"),
    (["--batch-size", "-1"], "must be in [1, 65536], got -1"),
    (["--lr", "0"], "'--lr': must be in (0, 10], got 0"),
    (["--lr", "-0.1"], "'--lr': must be in (0, 10], got -0.1"),
    (["--augment", "rotate"], "unknown augmentation 'rotate'"),
    (["--augment", "shift,twirl"], "unknown augmentation 'twirl'"),
    (["--epochs", "many"], "invalid value for '--epochs' / '-e': 'many' is not a whole number"),
    (["--optimizer", "adamx"], "invalid value for '--optimizer': 'adamx' is not one of 'sgd', 'adamw'"),
    (["--val-fraction", "1"], "'--val-fraction': must be in [0, 1), got 1"),
])
@pytest.mark.parametrize("command", ["train", "finetune"])
def test_impossible_option_values(command, args, fragment, tmp_path):
    model = "lenet5" if command == "train" else "timm/test_resnet"
    fragments = fragment if isinstance(fragment, tuple) else (fragment,)
    fails_cleanly([command, model, "--data", DATA, "--out", tmp_path / "r", *args], 2, *fragments)
    assert not (tmp_path / "r").exists()


def test_usage_error_points_to_help():
    fails_cleanly(["train", "lenet5", "--no-such-flag"], 2, "error: no such option: --no-such-flag",
                  "cnncli train --help")


# ------------------------------------------------------------------------------ output folders
def test_output_folder_that_is_a_file_or_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("precious")
    fails_cleanly(["train", "lenet5", "--data", DATA, "--out", tmp_path / "afile"], 2, "is a file",
                  "choose another --out", untouched=[tmp_path / "afile"])
    fails_cleanly(["train", "lenet5", "--data", DATA, "--out", tmp_path / "afile" / "run"], 2, "cannot write",
                  "Not a directory", untouched=[tmp_path / "afile"])


@pytest.fixture
def read_only_dir(tmp_path, tmpfs):
    """A folder nobody may write: a read-only tmpfs as root (root ignores modes), mode 0555 otherwise."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        yield tmpfs(folder, "ro,size=64k")
        return
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


def test_output_folder_that_cannot_be_written(read_only_dir, ckpt):
    fails_cleanly(["train", "lenet5", "--data", DATA, "--out", read_only_dir / "run"], 2, "cannot write",
                  str(read_only_dir / "run"))
    fails_cleanly(["eval", ckpt, "--plot", read_only_dir / "confusion.png"], 2, "cannot write",
                  "confusion.png", untouched=[ckpt])
    fails_cleanly(["export", ckpt, "--format", "safetensors", "--out", read_only_dir / "m.safetensors"], 2,
                  "cannot write", untouched=[ckpt])


def test_existing_run_is_not_damaged_by_a_new_run_into_it(run_dir):
    fails_cleanly(["train", "lenet5", "--data", DATA, "--epochs", 1, "--out", run_dir], 2,
                  "already holds a run", f"--resume {run_dir}", untouched=[run_dir])


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    fails_cleanly(["train", "--resume", tmp_path, "--data", DATA], 2, "is not a cnncli run",
                  untouched=[tmp_path])
    fails_cleanly(["train", "--resume", tmp_path / "notes.txt"], 2, "expects a run directory")


def test_failing_eval_and_export_leave_the_run_alone(run_dir, ckpt, tmp_path):
    fails_cleanly(["eval", ckpt, "--data", "cifar10", "--data-dir", tmp_path], 2, "cifar10 not found",
                  untouched=[run_dir])
    fails_cleanly(["eval", run_dir, "--data", "synthetic:n=60,classes=3"], 2, "classes", untouched=[run_dir])
    fails_cleanly(["export", ckpt, "--out", ckpt], 2, "the checkpoint itself", untouched=[run_dir])
    fails_cleanly(["export", ckpt, "--format", "safetensors", "--half", "--bf16"], 2, "--half or --bf16",
                  untouched=[run_dir])


# ------------------------------------------------------------------------------ recipes
def test_recipe_with_a_wrong_type_names_the_key_and_the_file(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "lenet5"\nepochs = "three"\n')
    fails_cleanly(["train", "--recipe", recipe], 2, str(recipe), "'epochs'", "must be an integer",
                  untouched=[recipe])
    recipe.write_text('model = "lenet5"\naugment = 3\n')
    fails_cleanly(["train", "--recipe", recipe], 2, str(recipe), "'augment'", "list of strings")


def test_recipe_with_an_unknown_key_suggests_the_option(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "lenet5"\nbatchsize = 32\n')
    fails_cleanly(["finetune", "--recipe", recipe], 2, str(recipe), "unknown key 'batchsize'", "'batch_size'")


def test_recipe_that_is_not_toml_or_nests_without_end(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "lenet5\n')
    fails_cleanly(["train", "--recipe", recipe], 2, str(recipe), "not valid TOML")
    recipe.write_text("epochs = " + "[" * 5000 + "]" * 5000 + "\n")
    fails_cleanly(["train", "--recipe", recipe], 2, str(recipe), "nest too deeply")
    fails_cleanly(["train", "--recipe", tmp_path / "missing.toml"], 2, "recipe not found")


# ------------------------------------------------------------------------------ --debug
def test_debug_shows_the_traceback_without_it_there_is_none(bad_files):
    result = cli("eval", bad_files["truncated"], "--debug")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "InputError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


# ------------------------------------------------------------------------------ the installed command
def _entry_point() -> list[str]:
    exe = Path(sys.executable).with_name("cnncli")
    found = str(exe) if exe.exists() else shutil.which("cnncli")
    return [found] if found else [sys.executable, "-m", "cnncli"]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["unknown-model", "truncated-checkpoint", "usage"])
def test_installed_command_keeps_the_contract(case, bad_files):
    args = {"unknown-model": ["inspect", "lenett5"],
            "truncated-checkpoint": ["eval", str(bad_files["truncated"])],
            "usage": ["train", "--epochs", "x"]}[case]
    before = tree_hashes(bad_files["truncated"])
    env = {k: v for k, v in os.environ.items() if k != "CNNCLI_DEBUG"}
    done = subprocess.run(_entry_point() + args, capture_output=True, text=True, timeout=300, env=env,
                          check=False)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert tree_hashes(bad_files["truncated"]) == before
