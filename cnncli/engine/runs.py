"""Run directories: `runs/<name>/`, or `runs/<name>-2/` ... when the name is taken.

What a command may write into, the run marker and the lock are the output-path policy's
(`cnncli.outputs`); this module is what the trainer asks of it.
"""

from __future__ import annotations

from pathlib import Path

from cnncli import outputs


def check_run_folder(command: str, *, out: str | None = None, resume: str | None = None) -> outputs.RunLock | None:
    """Before any data is loaded, so that a bad folder is the only line the user sees: --out is
    checked (nothing is written yet), --resume is claimed (locked) for the whole run."""
    if resume is not None:
        return outputs.claim_resumed_run(resume, command)
    if out:
        outputs.check_new_run(out, command)
    return None


def claim_run_folder(name: str, command: str, out: str | None = None,
                     root: str = "runs") -> tuple[Path, outputs.RunLock]:
    """The folder of a new run (--out, or a new one under `root` named after the run): created,
    locked and marked as `command`'s."""
    if out:
        return Path(out), outputs.claim_new_run(out, command)
    path = outputs.new_run_folder(name, root)
    return path, outputs.claim_new_run(path, command, made_here=True)
