"""One way to print a progress or warning line from the nerfstudio glue (nerfstudio's console, no
markup, no wrapping)."""

from __future__ import annotations

from nerfstudio.utils.rich_utils import CONSOLE


def log_line(message: str, style: str | None = None, prefix: str = "") -> None:
    CONSOLE.print(f"{prefix}{message}", style=style, soft_wrap=True, markup=False, highlight=False)
