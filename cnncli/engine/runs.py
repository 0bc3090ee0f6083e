"""Run directories: `runs/<name>/`, or `runs/<name>-2/` ... when the name is taken."""

from __future__ import annotations

from pathlib import Path

from cnncli.fileio import ensure_writable_dir


def check_out_dir(out: str | Path) -> Path:
    """An --out folder for a new run: refused when it is a file or already holds a run; created.

    Called before any data is loaded, so that a bad --out is the only line the user sees.
    """
    from cnncli.errors import InputError

    path = Path(out)
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {path} is a file, not a folder; choose another --out")
    if (path / "train_state.safetensors").exists():
        raise InputError(f"{path} already holds a run; resume it with --resume {path} "
                         "or choose another --out")
    return ensure_writable_dir(path)


def new_run_dir(name: str, out: str | None = None, root: str = "runs") -> Path:
    if out:
        return check_out_dir(out)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "run"
    base = Path(root) / safe
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{safe}-{n}")
    return ensure_writable_dir(path)
