"""Progress lines of the command-line tools, written above their progress bars."""

from __future__ import annotations


def say(tool: str, msg: str) -> None:
    """``[tool] msg`` in bold, without breaking a running tqdm bar."""
    from tqdm import tqdm

    tqdm.write(f"\033[1m[{tool}]\033[0m {msg}")
