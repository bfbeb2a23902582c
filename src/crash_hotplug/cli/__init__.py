"""``crash-hotplug``: thin commands over the library, one module per command group.

Every command that reads machine state takes ``--root DIR`` (default ``/``): a live host, a
snapshot, or an extracted sosreport. Bad input ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from crash_hotplug.cli.common import PAGE_SIZE, err, example_root, fails_cleanly

__all__ = ["cli", "example_root", "main"]

#: command groups, imported when they are run (a run of one command loads only its own part of
#: the library): name -> (module, attribute)
_LAZY = {
    "audit": ("crash_hotplug.cli.audit", "audit"),
    "elfcorehdr": ("crash_hotplug.cli.elfcorehdr", "elfcorehdr"),
    "lab": ("crash_hotplug.cli.lab", "lab"),
    "scenario": ("crash_hotplug.cli.scenario", "scenario"),
    "simulate": ("crash_hotplug.cli.simulate", "simulate"),
    "snapshot": ("crash_hotplug.cli.host", "snapshot"),
    "status": ("crash_hotplug.cli.host", "status"),
}


class _LazyGroup(click.Group):
    """A group whose subcommands in :data:`_LAZY` are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _LAZY and cmd_name not in self.commands:
            module, attr = _LAZY[cmd_name]
            cmd = getattr(importlib.import_module(module), attr)
            assert isinstance(cmd, click.Command)
            self.add_command(cmd, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="crash-hotplug")
def cli() -> None:
    """Linux kdump crash hotplug, modelled to the byte."""


@cli.command()
@click.option("--root", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Snapshot to use instead of the bundled example.")
@fails_cleanly
def demo(root: Path | None) -> None:
    """The default job: build and show the elfcorehdr of the bundled example snapshot."""
    from crash_hotplug.cli.elfcorehdr import print_summary
    from crash_hotplug.crash.x86_64 import crash_load_segments_memsz, prepare_elf_headers
    from crash_hotplug.elf.core import ElfCore
    from crash_hotplug.inspect import summarize
    from crash_hotplug.snapshot.reader import read_kernel_state

    root = root or example_root()
    state = read_kernel_state(root)
    buf, nr = prepare_elf_headers(state)
    memsz = crash_load_segments_memsz(state.config, len(buf), nr)
    s = summarize(ElfCore.parse(buf, "built"), note_owners={a: c for c, a in state.crash_notes.items()},
                  reserved_size=-(-memsz // PAGE_SIZE) * PAGE_SIZE)
    print_summary(s, f"elfcorehdr built for {root} (kernel {state.config.version})")


def main() -> None:
    """The console entry point. A usage error (a bad option, a path of the wrong kind) is one line on
    stderr naming the parameter, and exit status 2, like every other unusable input."""
    try:
        rv = cli.main(prog_name="crash-hotplug", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:
        e.show()
        sys.exit(e.exit_code)
    except click.ClickException as e:
        err.print(f"crash-hotplug: error: {e.format_message()}", markup=False, soft_wrap=True)
        sys.exit(2 if isinstance(e, click.UsageError) else e.exit_code)
    except click.Abort:
        err.print("crash-hotplug: aborted", markup=False)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
