"""Naming a kernel: archive releases, the 7.x packaging split, .debs and bzImage + config (no VM, no network)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from crash_hotplug.cli.lab import lab
from crash_hotplug.lab import kernels as kernels_mod
from crash_hotplug.lab.debian import find_kernel_files, unpack_kernel
from crash_hotplug.lab.errors import KernelFetchError
from crash_hotplug.lab.kconfig import KernelConfig, bzimage_version, hotplug_verdict
from crash_hotplug.lab.kernels import ArchiveKernel, KernelRequest, archive_kernels, is_release, pick_release

CONFIG_HOTPLUG = "CONFIG_CRASH_DUMP=y\nCONFIG_KEXEC_FILE=y\nCONFIG_CRASH_HOTPLUG=y\nCONFIG_NR_CPUS=8192\n"
CONFIG_NO_HOTPLUG = "CONFIG_CRASH_DUMP=y\nCONFIG_KEXEC_FILE=y\n# CONFIG_CRASH_HOTPLUG is not set\nCONFIG_NR_CPUS=64\n"


def fake_bzimage(path: Path, version: str) -> Path:
    """The boot-protocol fields bzimage_version reads: 'HdrS' at 0x202, kernel_version at 0x20e."""
    blob = bytearray(0x1000)
    blob[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", blob, 0x20E, 0x400 - 0x200)
    text = version.encode() + b"\0"
    blob[0x400 : 0x400 + len(text)] = text
    path.write_bytes(bytes(blob))
    return path


def build_deb(tmp: Path, name: str, files: dict[str, bytes]) -> Path:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed")
    root = tmp / f"pkg-{name}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1.0-1\nArchitecture: amd64\nMaintainer: lab <lab@example.org>\nDescription: test\n"
    )
    for rel, data in files.items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    out = tmp / f"{name}_1.0-1_amd64.deb"
    subprocess.run(["dpkg-deb", "-Zgzip", "--build", str(root), str(out)], check=True, capture_output=True)
    return out


def test_config_options_and_verdicts(tmp_path: Path) -> None:
    cfg = KernelConfig.parse(CONFIG_HOTPLUG, tmp_path / "config")
    assert cfg.crash_hotplug is True and cfg.nr_cpus == 8192
    assert hotplug_verdict("7.3.4+deb13-amd64", cfg) == ("in-kernel", None)
    off = KernelConfig.parse(CONFIG_NO_HOTPLUG, tmp_path / "config")
    assert off.crash_hotplug is False
    mode, refusal = hotplug_verdict("6.18.15+deb13-amd64", off)
    assert mode == "none" and refusal is not None and "CONFIG_CRASH_HOTPLUG is not set" in refusal
    # 6.1 predates the option: the udev-reload baseline, not a refusal
    old = KernelConfig.parse("CONFIG_CRASH_DUMP=y\nCONFIG_KEXEC_FILE=y\n", tmp_path / "config")
    assert old.crash_hotplug is None
    assert hotplug_verdict("6.1.0-50-amd64", old) == ("legacy", None)
    nodump = KernelConfig.parse("CONFIG_KEXEC_FILE=y\n# CONFIG_CRASH_DUMP is not set\n", tmp_path / "c")
    assert "CONFIG_CRASH_DUMP is not set" in str(hotplug_verdict("7.3.4+deb13-amd64", nodump)[1])
    assert hotplug_verdict("7.3.4+deb13-amd64", None) == ("unknown", None)
    with pytest.raises(KernelFetchError, match="not a kernel config"):
        KernelConfig.parse("hello\n", tmp_path / "x")


def test_bzimage_version(tmp_path: Path) -> None:
    img = fake_bzimage(tmp_path / "vmlinuz", "7.3.4+deb13-amd64 (debian-kernel@lists.debian.org) #1 SMP")
    assert bzimage_version(img).split()[0] == "7.3.4+deb13-amd64"
    junk = tmp_path / "junk"
    junk.write_bytes(b"\0" * 4096)
    with pytest.raises(KernelFetchError, match=r"junk: not an x86 bzImage"):
        bzimage_version(junk)


ARCHIVE = [
    ArchiveKernel("6.1.0-50-amd64", "6.1.176-1", "bookworm", "linux-image-6.1.0-50-amd64", None, None),
    ArchiveKernel("6.12.43+deb12-amd64", "6.12.43-1~bpo12+1", "bookworm-backports",
                  "linux-image-6.12.43+deb12-amd64", None, None),
    ArchiveKernel("6.18.12+deb13-amd64", "6.18.12-1~bpo13+1", "trixie-backports",
                  "linux-image-6.18.12+deb13-amd64", None, None),
    ArchiveKernel("6.18.15+deb13-amd64", "6.18.15-1~bpo13+1", "trixie-backports",
                  "linux-image-6.18.15+deb13-amd64", None, None),
    ArchiveKernel("7.2.12+deb13-amd64", "7.2.12-1~bpo13+1", "trixie-backports", "linux-image-7.2.12+deb13-amd64",
                  "linux-binary-7.2.12+deb13-amd64", "linux-base-7.2.12+deb13-amd64"),
    ArchiveKernel("7.2.13+deb14-amd64", "7.2.13-1", "sid", "linux-image-7.2.13+deb14-amd64",
                  "linux-binary-7.2.13+deb14-amd64", "linux-base-7.2.13+deb14-amd64"),
    ArchiveKernel("7.3.4+deb13-amd64", "7.3.4-1~bpo13+1", "trixie-backports", "linux-image-7.3.4+deb13-amd64",
                  "linux-binary-7.3.4+deb13-amd64", "linux-base-7.3.4+deb13-amd64"),
]


@pytest.mark.parametrize(
    ("key", "release"),
    [
        ("6.18.15+deb13-amd64", "6.18.15+deb13-amd64"),
        ("6.18.15", "6.18.15+deb13-amd64"),
        ("6.18", "6.18.15+deb13-amd64"),
        ("7.3.4", "7.3.4+deb13-amd64"),
        ("7.2", "7.2.13+deb14-amd64"),
        ("7.2.12+deb13-amd64", "7.2.12+deb13-amd64"),
    ],
)
def test_pick_release(key: str, release: str) -> None:
    assert pick_release(ARCHIVE, key).release == release


def test_pick_release_the_archive_lacks() -> None:
    assert is_release("9.9.9+deb13-amd64")
    with pytest.raises(KernelFetchError, match=r"kernel 9\.9\.9\+deb13-amd64: not in the archive"):
        pick_release(ARCHIVE, "9.9.9+deb13-amd64")
    with pytest.raises(KernelFetchError, match=r"kernel 6\.17\.1: no such release"):
        pick_release(ARCHIVE, "6.17.1")
    with pytest.raises(KernelFetchError, match="unknown kernel key"):
        pick_release(ARCHIVE, "latest")


def test_split_packaging_picks_binary_and_base() -> None:
    k = ARCHIVE[-1]
    assert k.split and k.packages_for_boot() == ["linux-binary-7.3.4+deb13-amd64", "linux-base-7.3.4+deb13-amd64"]
    assert ARCHIVE[3].packages_for_boot() == ["linux-image-6.18.15+deb13-amd64"]


class _FakeArchive:
    def __init__(self, rows: dict[str, list[tuple[str, str]]]) -> None:
        self.rows = rows

    def package_names(self, prefix: str) -> list[str]:
        return sorted(n for n in self.rows if n.startswith(prefix))

    def madison_many(self, names: list[str]) -> dict[str, list[tuple[str, str]]]:
        return {n: self.rows.get(n, []) for n in names}


def test_archive_kernels_from_the_lists() -> None:
    rows = {
        "linux-image-7.3.4+deb13-amd64": [("7.3.4-1~bpo13+1", "trixie-backports")],
        "linux-binary-7.3.4+deb13-amd64": [("7.3.4-1~bpo13+1", "trixie-backports")],
        "linux-base-7.3.4+deb13-amd64": [("7.3.4-1~bpo13+1", "trixie-backports")],
        "linux-image-6.12.43+deb12-amd64": [("6.12.43-1~bpo12+1", "bookworm-backports")],
        "linux-image-6.12.43+deb12-amd64-unsigned": [("6.12.43-1~bpo12+1", "bookworm-backports")],
        "linux-image-6.12.43+deb12-amd64-dbg": [("6.12.43-1~bpo12+1", "bookworm-backports")],
        "linux-image-6.12-amd64": [("6.12.117-1~deb12u1", "bookworm-security")],  # a metapackage
        "linux-image-7.3.4+deb13-cloud-amd64": [("7.3.4-1~bpo13+1", "trixie-backports")],
    }
    found = archive_kernels(_FakeArchive(rows))  # type: ignore[arg-type]
    assert [k.release for k in found] == ["6.12.43+deb12-amd64", "7.3.4+deb13-amd64"]
    assert found[0].image == "linux-image-6.12.43+deb12-amd64" and not found[0].split
    assert found[1].binary == "linux-binary-7.3.4+deb13-amd64" and found[1].base == "linux-base-7.3.4+deb13-amd64"


def test_unpack_the_7x_split_and_a_classic_image(tmp_path: Path) -> None:
    rel = "7.3.4+deb13-amd64"
    img = fake_bzimage(tmp_path / "img", f"{rel} (x) #1")
    binary = build_deb(tmp_path, f"linux-binary-{rel}", {f"usr/lib/modules/{rel}/vmlinuz": img.read_bytes()})
    base = build_deb(tmp_path, f"linux-base-{rel}", {f"usr/lib/modules/{rel}/config": CONFIG_HOTPLUG.encode()})
    kp = unpack_kernel([binary, base], tmp_path / "k7", key=rel)
    assert kp.release == rel and kp.config is not None and kp.config.read_text() == CONFIG_HOTPLUG
    assert kp.packages == (f"linux-binary-{rel} 1.0-1", f"linux-base-{rel} 1.0-1")
    old = "6.18.15+deb13-amd64"
    classic = build_deb(
        tmp_path, f"linux-image-{old}", {f"boot/vmlinuz-{old}": img.read_bytes(), f"boot/config-{old}": b"CONFIG_X=y\n"}
    )
    kp = unpack_kernel([classic], tmp_path / "k6", key=old)
    assert kp.release == old and kp.config == tmp_path / "k6" / "boot" / f"config-{old}"
    assert find_kernel_files(tmp_path / "k6")[2] == old


def test_empty_7x_linux_image_names_the_split(tmp_path: Path) -> None:
    empty = build_deb(tmp_path, "linux-image-7.3.4+deb13-amd64", {"usr/share/doc/x/README": b"x"})
    with pytest.raises(KernelFetchError, match=r"no kernel image in it.*linux-binary-<release>"):
        unpack_kernel([empty], tmp_path / "k", key="x")


def test_request_needs_exactly_one_kernel(tmp_path: Path) -> None:
    with pytest.raises(KernelFetchError, match="name exactly one kernel"):
        KernelRequest()
    with pytest.raises(KernelFetchError, match="--vmlinuz needs --config"):
        KernelRequest(vmlinuz=tmp_path / "v")


def _run_cli(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """Exit code and the error lines (progress lines, which start with a time stamp, left out)."""
    monkeypatch.setenv("CRASH_HOTPLUG_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(lab, ["run", "short", *args, "--out", str(tmp_path / "run")])
    assert "Traceback" not in res.output
    errors = [ln for ln in res.output.splitlines() if ln.strip() and not ln.startswith(("[", " "))]
    return res.exit_code, "\n".join(errors)


def test_cli_package_that_is_not_a_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deb = build_deb(tmp_path, "hello", {"usr/bin/hello": b"#!/bin/sh\n"})
    code, out = _run_cli(["--kernel-deb", str(deb)], tmp_path, monkeypatch)
    assert code == 2
    lines = out.strip().splitlines()
    assert len(lines) == 1 and "hello 1.0-1" in lines[0] and "no kernel image" in lines[0], out


def test_cli_file_that_is_not_a_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bogus = tmp_path / "bogus.deb"
    bogus.write_bytes(b"not an ar archive")
    code, out = _run_cli(["--kernel-deb", str(bogus)], tmp_path, monkeypatch)
    assert code == 2 and len(out.strip().splitlines()) == 1 and "bogus.deb: not a Debian package" in out, out


def test_cli_kernel_without_crash_hotplug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img = fake_bzimage(tmp_path / "vmlinuz", "6.18.15-custom (me@example.org) #1 SMP")
    cfg = tmp_path / "config"
    cfg.write_text(CONFIG_NO_HOTPLUG)
    code, out = _run_cli(["--vmlinuz", str(img), "--config", str(cfg)], tmp_path, monkeypatch)
    assert code == 2, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and "CONFIG_CRASH_HOTPLUG is not set in kernel 6.18.15-custom" in lines[0], out
    assert not (tmp_path / "run" / "serial.log").exists()  # refused before any VM


def test_cli_version_the_archive_does_not_have(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels_mod, "archive_kernels", lambda _archive, *_a: ARCHIVE)
    code, out = _run_cli(["--kernel", "9.9.9+deb13-amd64"], tmp_path, monkeypatch)
    assert code == 2
    lines = out.strip().splitlines()
    assert len(lines) == 1 and "kernel 9.9.9+deb13-amd64: not in the archive" in lines[0], out
