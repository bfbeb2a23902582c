"""What every command shares: the consoles and the rule that bad input ends in one line and exit 2."""

from __future__ import annotations

import functools
import shutil
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import ParamSpec, TypeVar

import click
from rich.console import Console

from crash_hotplug.errors import CrashHotplugError

__all__ = ["PAGE_SIZE", "err", "example_root", "fails_cleanly", "out", "root_option", "size_text"]

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


PAGE_SIZE = 4096


def example_root() -> Path:
    """The bundled example snapshot (a 4 GiB, 2-CPU guest with kdump loaded)."""
    return Path(str(resources.files("crash_hotplug") / "data" / "example" / "root"))


def size_text(n: int) -> str:
    """A byte count in the largest binary unit that keeps it at least 1."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.2f} {unit}".replace(".00 ", " ")
    return f"{n} B"


root_option = click.option(
    "--root", "root", type=click.Path(path_type=Path, file_okay=False), default=Path("/"), show_default=True,
    help="Directory holding proc/ and sys/ as the host shows them (a live host, a snapshot, a sosreport).",
)
