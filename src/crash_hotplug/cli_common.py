"""What every command shares: the consoles and the rule that bad input ends in one line and exit 2."""

from __future__ import annotations

import functools
import shutil
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from rich.console import Console

from crash_hotplug.errors import CrashHotplugError

__all__ = ["err", "fails_cleanly", "out"]

P = ParamSpec("P")
R = TypeVar("R")

#: wide enough for the comparison tables when the output is not a terminal
out = Console(highlight=False, width=None if sys.stdout.isatty() else max(160, shutil.get_terminal_size().columns))
err = Console(stderr=True, highlight=False)


def fails_cleanly(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn the package's errors into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except CrashHotplugError as e:
            err.print(f"crash-hotplug: error: {e}", markup=False, soft_wrap=True)
            sys.exit(2)

    return wrapper
