"""The one error type for bad input, and the one place that turns it into a message.

Bad input (a missing or damaged file, a value of the wrong type or shape, an option that cannot
work) raises `ILRMError` with a message that names the file or option, the problem and what to
do. Nothing catches it on the way up: our CLIs (`main` wrapped in `exit_on_error`) and the
nerfstudio commands while they run one of our methods (`install_excepthook`, called by our
methods' setup, never at import) print that message as one line and exit with a non-zero code (2
from ours; 1 from nerfstudio's, as Python exits after its excepthook), with no traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)
EXIT_CODE = 2


class ILRMError(ValueError):
    """Bad input; the message names the file or option and the problem."""


def brief(error: BaseException, limit: int = 160) -> str:
    """A foreign exception as a short clause for an ILRMError message: its type and first sentence
    (PyTorch's zip reader, for one, appends a paragraph of advice)."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    first = " ".join(lines[0].split()).split(". ")[0] if lines else ""
    return f"{type(error).__name__}: {first[:limit]}" if first else type(error).__name__


def one_line(error: BaseException) -> str:
    """The message of `error` without what PyTorch's DataLoader wraps around a worker's error
    ("Caught ILRMError in DataLoader worker process 0. Original Traceback ...")."""
    text = str(error).strip()
    marker = f"{ILRMError.__module__}.{ILRMError.__name__}: "
    if "Original Traceback" in text and marker in text:
        text = text.rsplit(marker, 1)[1].strip()
    return " ".join(text.split("\n")[:1]) if "Traceback" in text else text


def exit_on_error(main: F) -> F:
    """Decorator for a CLI's main(), whose return value is the exit code (console scripts call
    sys.exit(main())): ILRMError -> one line on stderr and 2; Ctrl-C -> one line and 130."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except ILRMError as error:
            print(f"ilrm: {one_line(error)}", file=sys.stderr, flush=True)
            return EXIT_CODE
        except KeyboardInterrupt:
            print("ilrm: interrupted", file=sys.stderr, flush=True)
            return 130

    return wrapper  # type: ignore[return-value]


def install_excepthook() -> None:
    """For nerfstudio's commands (ns-train, ns-eval, ns-export, ...) running one of our methods:
    an ILRMError that reaches the top of the main thread is printed as one line (exit code 1).
    Called by our methods' setup (trainer config, pipelines), so other methods are untouched."""
    previous = sys.excepthook
    if getattr(previous, "ilrm", False):
        return

    def hook(kind, error, traceback):
        if isinstance(error, ILRMError):
            print(f"ilrm: {one_line(error)}", file=sys.stderr, flush=True)
        else:
            previous(kind, error, traceback)

    hook.ilrm = True  # type: ignore[attr-defined]
    sys.excepthook = hook
