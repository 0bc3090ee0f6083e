"""Run directories: `runs/<name>/`, or `runs/<name>-2/` ... when the name is taken.

What a command may write into, the run marker and the lock are the output-path policy's
(`cnncli.outputs`); this module is what the trainer asks of it.
"""

from __future__ import annotations

from pathlib import Path

from cnncli import outputs


def open_run(command: str, *, out: str | None = None, resume: str | None = None) -> outputs.RunLock | None:
    """Claim the folder of a run given by --out or --resume: checked, locked and marked.

    Called before any data is loaded, so that a bad folder is the only line the user sees.
    """
    if resume is not None:
        return outputs.claim_resumed_run(resume, command)
    if out:
        return outputs.claim_new_run(out, command)
    return None


def new_run_dir(name: str, command: str, root: str = "runs") -> tuple[Path, outputs.RunLock]:
    """A new folder under `root` named after the run, claimed for `command`."""
    path = outputs.new_run_folder(name, root)
    return path, outputs.claim_new_run(path, command)
