"""The generated purgatory object: readable by standard ELF tools, loaded and patched as the
kernel does, and its digest check."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from crash_hotplug.kexec.purgatory import (
    KEXEC_TOOLS_SYMBOLS,
    PurgatoryDigestMismatch,
    PurgatoryError,
    PurgatoryInfo,
    PurgatoryObject,
    build_purgatory,
    pack_sha_regions,
    sha256_segments,
    unpack_sha_regions,
    verify_sha256_digest,
)
from crash_hotplug.machine.physmem import PhysMem


def test_pyelftools_reads_it() -> None:
    elf = ELFFile(io.BytesIO(build_purgatory()))
    assert elf.header.e_type == "ET_REL" and elf.header.e_machine == "EM_X86_64" and elf.elfclass == 64
    assert [s.name for s in elf.iter_sections()] == ["", ".text", ".data", ".bss", ".symtab", ".strtab", ".shstrtab"]
    symtab = elf.get_section_by_name(".symtab")
    syms = {s.name: s for s in symtab.iter_symbols()}
    data_idx = [s.name for s in elf.iter_sections()].index(".data")
    assert syms["purgatory_sha_regions"]["st_size"] == 256 and syms["purgatory_sha_regions"]["st_shndx"] == data_idx
    assert syms["purgatory_sha256_digest"]["st_size"] == 32 and syms["purgatory_sha256_digest"]["st_value"] == 0x100
    assert syms["purgatory_sha256_digest"]["st_info"]["bind"] == "STB_GLOBAL"
    assert elf.get_section_by_name(".bss")["sh_type"] == "SHT_NOBITS"


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils readelf not installed")
def test_readelf_reads_it(tmp_path: Path) -> None:
    obj = tmp_path / "purgatory.ro"
    obj.write_bytes(build_purgatory(symbols=KEXEC_TOOLS_SYMBOLS))
    out = subprocess.run(["readelf", "-hsSW", str(obj)], capture_output=True, text=True, check=True)
    assert "REL (Relocatable file)" in out.stdout and "Advanced Micro Devices X86-64" in out.stdout
    assert "   256 OBJECT  GLOBAL DEFAULT    2 sha256_regions" in out.stdout
    assert "    32 OBJECT  GLOBAL DEFAULT    2 sha256_digest" in out.stdout
    assert out.stderr == ""


def test_load_layout_matches_the_kernel_log() -> None:
    # 6.12 debug log: "Loaded purgatory at 0x7effb000", segment bufsz=0x4000 memsz=0x5000,
    # "kexec_file_load: ... start:0x7effb160"
    pi = PurgatoryInfo.setup_kbuf(PurgatoryObject.parse(build_purgatory()))
    assert (pi.bufsz, pi.memsz) == (0x4000, 0x5000)
    assert pi.setup_sechdrs(0x7EFFB000) == 0x7EFFB160
    assert pi.symbol_addr("purgatory_sha_regions") == 0x7EFFE000
    assert pi.symbol_addr("purgatory_sha256_digest") == 0x7EFFE100
    assert pi.symbol_addr("purgatory_stack") == 0x7EFFF000


def test_get_set_symbol_checks() -> None:
    pi = PurgatoryInfo.setup_kbuf(PurgatoryObject.parse(build_purgatory()))
    pi.setup_sechdrs(0x1000000)
    pi.set_symbol("purgatory_sha256_digest", bytes(range(32)))
    assert pi.get_symbol("purgatory_sha256_digest", 32) == bytes(range(32))
    assert pi.purgatory_buf[0x3100:0x3120] == bytes(range(32))
    with pytest.raises(PurgatoryError, match="size mismatch"):
        pi.set_symbol("purgatory_sha256_digest", bytes(16))
    with pytest.raises(PurgatoryError, match="bss"):
        pi.set_symbol("purgatory_stack", bytes(0x1000))
    with pytest.raises(PurgatoryError, match="no global symbol"):
        pi.set_symbol("sha256_digest", bytes(32))
    with pytest.raises(PurgatoryError):
        PurgatoryObject.parse(b"\x7fELF" + bytes(60))


def test_verify_sha256_digest() -> None:
    mem = PhysMem(seed=1)
    mem.write(0x200000, b"kernel" * 100)
    regions, digest = sha256_segments([(mem.read(0x200000, 600), 0x200000, 0x1000),
                                       (mem.read(0x300000, 0x2000), 0x300000, 0x2000)])
    assert regions == [(0x200000, 0x1000), (0x300000, 0x2000)]
    mem.zero(0x200000 + 600, 0x1000 - 600)
    mem.write(0x400000, pack_sha_regions(regions))
    mem.write(0x400100, digest)
    assert unpack_sha_regions(mem.read(0x400000, 256))[:3] == [*regions, (0, 0)]
    assert verify_sha256_digest(mem, 0x400000, 0x400100)
    mem.write(0x300800, b"X")
    assert not verify_sha256_digest(mem, 0x400000, 0x400100)
    with pytest.raises(PurgatoryDigestMismatch) as e:
        verify_sha256_digest(mem, 0x400000, 0x400100, raise_on_mismatch=True)
    assert e.value.expected == digest and e.value.regions == tuple(regions)
