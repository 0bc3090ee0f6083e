"""Run directories: `runs/<name>/`, or `runs/<name>-2/` ... when the name is taken."""

from __future__ import annotations

from pathlib import Path

from cnncli.fileio import ensure_writable_dir


def new_run_dir(name: str, out: str | None = None, root: str = "runs") -> Path:
    if out:
        path = Path(out)
        if path.exists() and any(path.iterdir()):
            if (path / "train_state.safetensors").exists():
                from cnncli.errors import InputError

                raise InputError(f"{path} already holds a run; resume it with --resume {path} "
                                 "or choose another --out")
        return ensure_writable_dir(path)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "run"
    base = Path(root) / safe
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{safe}-{n}")
    return ensure_writable_dir(path)
