"""What every command shares: the consoles and the rule that bad input ends in one line and exit 2."""

from __future__ import annotations

import functools
import os
import shutil
import stat
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
from rich.console import Console

from crash_hotplug.errors import CrashHotplugError

__all__ = [
    "PAGE_SIZE",
    "OutputError",
    "check_output_dir",
    "check_output_file",
    "err",
    "example_root",
    "fail",
    "fails_cleanly",
    "out",
    "output_dir",
    "output_empty_dir",
    "output_file",
    "root_option",
    "size_text",
    "write_output",
]

P = ParamSpec("P")
R = TypeVar("R")

#: wide enough for the comparison tables when the output is not a terminal
out = Console(highlight=False, width=None if sys.stdout.isatty() else max(160, shutil.get_terminal_size().columns))
err = Console(stderr=True, highlight=False)


class OutputError(CrashHotplugError):
    """An output (file or directory a command writes) that cannot be written."""

    def __init__(self, path: Path | str, what: str) -> None:
        self.path = str(path)
        self.what = what
        super().__init__(f"{path}: cannot write: {what}")


def fail(message: object) -> None:
    """One line on stderr, exit status 2: what every command does with unusable input."""
    err.print(f"crash-hotplug: error: {message}", markup=False, soft_wrap=True)
    sys.exit(2)


def fails_cleanly(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn the package's errors into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except CrashHotplugError as e:
            fail(e)
            raise  # not reached: fail() exits

    return wrapper


#: ``/dev/full`` (``drivers/char/mem.c``: major 1, minor 7): every write fails with ENOSPC
_DEV_FULL = (1, 7)


def _parent_dir(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    try:
        st = parent.stat()
    except FileNotFoundError:
        raise OutputError(path, f"directory {parent} does not exist") from None
    except OSError as e:
        raise OutputError(path, f"directory {parent}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(path, f"{parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(path, f"directory {parent} is not writable")


def check_output_file(path: Path) -> Path:
    """Raise :class:`OutputError` unless ``path`` can be created or overwritten as a file.

    Checked before any work so a long run never ends in a failed write: the directory must exist and
    be writable; an existing path must be a writable regular file or a device other than ``/dev/full``.
    """
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        _parent_dir(path)
        return path
    except OSError as e:
        raise OutputError(path, e.strerror or str(e)) from None
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(path, "is a directory")
    if stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == _DEV_FULL:
        raise OutputError(path, "no space left on device (every write to /dev/full fails)")
    if not os.access(path, os.W_OK):
        raise OutputError(path, "permission denied")
    return path


def check_output_dir(path: Path, *, must_be_empty: bool = False) -> Path:
    """Raise :class:`OutputError` unless ``path`` is (or can be made, in an existing directory) a
    writable directory; with ``must_be_empty``, an existing one must be empty."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        _parent_dir(path)
        return path
    except OSError as e:
        raise OutputError(path, e.strerror or str(e)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(path, "exists and is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(path, "directory is not writable")
    if must_be_empty and any(path.iterdir()):
        raise OutputError(path, "exists and is not empty")
    return path


def write_output(path: Path, data: bytes | str) -> None:
    """Write an output file; a failure (disk full, I/O error) is an :class:`OutputError`."""
    try:
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
    except OSError as e:
        raise OutputError(path, e.strerror or str(e)) from None


def _checked(check: Callable[[Path], Path]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None or ctx.resilient_parsing:
            return value
        try:
            check(Path(value))
        except OutputError as e:
            fail(e)
        return value

    return callback


#: click callbacks: the output is checked while the command line is parsed, before any work
output_file = _checked(check_output_file)
output_dir = _checked(check_output_dir)
output_empty_dir = _checked(functools.partial(check_output_dir, must_be_empty=True))


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
