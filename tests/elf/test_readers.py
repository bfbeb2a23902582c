"""Independent readers (pyelftools, binutils readelf) agree with ours on every header we write."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from crash_hotplug.crash.x86_64 import elfcorehdr_from_root, prepare_elf_headers
from crash_hotplug.elf.core import ElfCore
from tests.conftest import vector_steps
from tests.factories import make_state

_PT = {"LOAD": 1, "NOTE": 4}


def _built_headers() -> list[tuple[str, bytes]]:
    out = [(s.id, elfcorehdr_from_root(s.root)) for s in vector_steps()]
    big = make_state([(i * 0x10000000, i * 0x10000000 + 0x7FFFFFF) for i in range(1, 300)], possible=64,
                     crash=[(0x20000000, 0x27FFFFFF), (0x30000000, 0x31FFFFFF)])
    out.append(("synthetic-300-ranges", prepare_elf_headers(big)[0]))
    return out


HEADERS = _built_headers()


def _ours(buf: bytes) -> list[tuple[int, ...]]:
    return [p.as_tuple() for p in ElfCore.parse(buf).phdrs]


@pytest.mark.parametrize(("name", "buf"), HEADERS, ids=[h[0] for h in HEADERS])
def test_pyelftools_agrees(name: str, buf: bytes, tmp_path: Path) -> None:
    f = tmp_path / "hdr"
    f.write_bytes(buf)
    with f.open("rb") as fh:
        elf = ELFFile(fh)
        assert elf.header["e_type"] == "ET_CORE"
        assert elf.header["e_machine"] == "EM_X86_64"
        theirs = [
            (_PT[seg["p_type"][3:]], seg["p_flags"], seg["p_offset"], seg["p_vaddr"], seg["p_paddr"],
             seg["p_filesz"], seg["p_memsz"], seg["p_align"])
            for seg in elf.iter_segments()
        ]
    assert theirs == _ours(buf)


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils readelf not installed")
@pytest.mark.parametrize(("name", "buf"), HEADERS, ids=[h[0] for h in HEADERS])
def test_readelf_agrees(name: str, buf: bytes, tmp_path: Path) -> None:
    f = tmp_path / "hdr"
    f.write_bytes(buf)
    # Notes in a raw elfcorehdr live at physical addresses, not in the file: readelf -n cannot
    # read them, so only the program headers are compared here (vmcores compare notes too).
    text = subprocess.run(["readelf", "-lW", str(f)], capture_output=True, text=True, check=True).stdout
    rows = re.findall(
        r"^\s+(LOAD|NOTE)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s*"
        r"([RWE ]*?)\s+(0x[0-9a-f]+|0)$",
        text, re.M,
    )
    flags = {"RWE": 7, "": 0}
    theirs = [
        (_PT[t], flags[fl.replace(" ", "")], int(o, 16), int(v, 16), int(p, 16), int(fs, 16), int(ms, 16), int(al, 16))
        for t, o, v, p, fs, ms, fl, al in rows
    ]
    assert theirs == _ours(buf)
