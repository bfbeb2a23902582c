"""Debian ppc64el kernels and guest tools for the pseries lab, through a private apt configuration.

The same ``AptArchive`` as the amd64 lab, rooted at ``<cache>/apt-ppc64el`` with
``APT::Architecture "ppc64el"`` and ``[arch=ppc64el]`` sources, so nothing on the host changes
(no ``dpkg --add-architecture``). The binaries cannot be run on the host, so the libraries a
guest binary loads are found from its own ELF headers (``PT_INTERP`` and ``DT_NEEDED``, read with
pyelftools), not with ``ldd``.

What the guest gets, and why:

* the kernel: ``linux-image-<release>-powerpc64le`` (4 KiB pages), the ELF ``/boot/vmlinux-*``
  that SLOF boots directly, and its ``/boot/config-*``;
* ``busybox-static`` from trixie;
* ``kexec-tools`` from sid (2.0.32): ``kexec -p --hotplug`` on ppc64 needs it, trixie has 2.0.29;
  its shared libraries from the same suite (sid's ``libc6``, as the vectors' guest had).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from crash_hotplug.lab.debian import (
    AptArchive,
    KernelPackage,
    Log,
    cache_dir,
    deb_field,
    extract_from_deb,
    write_atomic,
)
from crash_hotplug.lab.errors import KernelFetchError

__all__ = [
    "PPC64_SUITES",
    "Ppc64GuestTools",
    "fetch_ppc64_guest_tools",
    "fetch_ppc64_kernel",
    "is_ppc64_key",
    "ppc64_archive",
    "resolve_ppc64_kernel",
    "shared_objects",
]

PPC64_SUITES: tuple[tuple[str, str], ...] = (
    ("main", "trixie"),
    ("main", "trixie-updates"),
    ("security", "trixie-security"),
    ("main", "bookworm-backports"),
    ("main", "sid"),
)
#: where the guest's userland comes from (see the module docstring)
BUSYBOX_SUITE = "trixie"
KEXEC_SUITE = "sid"
TRIPLET = "powerpc64le-linux-gnu"

# ppc64le-6.12 (newest 6.12 in trixie), ppc64le-6.12.N, ppc64le-7.2, or a full release.
_KEY = re.compile(r"ppc64le-([0-9]+)\.([0-9]+)(?:\.([0-9]+))?")
_RELEASE = re.compile(r"([0-9]+)\.([0-9]+)\.([0-9]+)\+deb([0-9]+)(?:\.[0-9]+)?-powerpc64le")


def is_ppc64_key(key: str | None) -> bool:
    """A ``--kernel`` that names a ppc64el kernel: ``ppc64le-X.Y[.Z]`` or ``X.Y.Z+debNN-powerpc64le``."""
    return key is not None and (_KEY.fullmatch(key) is not None or _RELEASE.fullmatch(key) is not None)


def ppc64_archive(log: Log | None = None) -> AptArchive:
    """The private ppc64el apt set-up in the lab cache."""
    return AptArchive(cache_dir() / "apt-ppc64el", log=log, arch="ppc64el", suites=PPC64_SUITES)


def resolve_ppc64_kernel(archive: AptArchive, key: str) -> list[tuple[str, str, str]]:
    """``(package, version, suite)`` of the kernels a ppc64 key names, best first (highest version;
    for one version, the suite order of ``PPC64_SUITES``)."""
    order = [suite for _k, suite in PPC64_SUITES]
    if m := _RELEASE.fullmatch(key):
        names = [f"linux-image-{key}"]
    elif m := _KEY.fullmatch(key):
        patch = m[3] or "[0-9]+"
        rx = re.compile(rf"linux-image-{m[1]}\.{m[2]}\.({patch})\+deb[0-9]+(?:\.[0-9]+)?-powerpc64le")
        names = [n for n in archive.package_names(f"linux-image-{m[1]}.{m[2]}.") if rx.fullmatch(n)]
    else:
        raise KernelFetchError(
            f"unknown ppc64 kernel key {key!r} (ppc64le-X.Y, ppc64le-X.Y.Z, X.Y.Z+debNN-powerpc64le)"
        )
    found: list[tuple[tuple[int, ...], str, str, str]] = []
    rows = archive.madison_many(names) if names else {}
    for name in names:
        rel = _RELEASE.fullmatch(name.removeprefix("linux-image-"))
        if rel is None:
            continue
        for version, suite in rows.get(name, []):
            if suite not in order:
                continue
            found.append(((int(rel[1]), int(rel[2]), int(rel[3]), -order.index(suite)), name, version, suite))
    if not found:
        raise KernelFetchError(f"the Debian archive has no ppc64el kernel for {key!r} ({', '.join(order)})")
    return [(name, version, suite) for _r, name, version, suite in sorted(found, reverse=True)]


def fetch_ppc64_kernel(archive: AptArchive, key: str) -> KernelPackage:
    """Download and unpack the ELF ``vmlinux`` and config of a ppc64el kernel (cached)."""
    meta_root = cache_dir() / "kernels"
    pinned = meta_root / f"key-ppc64el-{key}.json"
    if pinned.exists() and archive.lists_fresh():
        with contextlib.suppress(KeyError, ValueError, TypeError):
            kp = KernelPackage.from_json({"key": key, **json.loads(pinned.read_text())})
            if kp.vmlinuz.exists() and kp.config is not None and kp.config.exists():
                return kp
    debs: list[Path] = []
    names: list[str] = []
    why: list[str] = []
    for package, version, suite in resolve_ppc64_kernel(archive, key):
        # A mirror can list a package it does not serve (a 404): take the next best one then.
        try:
            debs, names = _kernel_debs(archive, package, suite)
            break
        except KernelFetchError as exc:
            why.append(f"{package} {version} ({suite}): {' '.join(str(exc).split())[-160:]}")
            archive._log(f"{package} {version} from {suite} could not be downloaded; trying the next")
    if not debs:
        raise KernelFetchError(f"no ppc64el kernel for {key!r} could be downloaded: {'; '.join(why[:3])}")
    dest = meta_root / debs[0].name.removesuffix(".deb")
    if not (dest / ".complete").exists():
        for deb in debs:
            extract_from_deb(deb, dest, KERNEL_MEMBERS_PPC64, allow_missing=True, merge=True)
        (dest / ".complete").touch()
    image, config, release = _find_vmlinux(dest)
    if image is None or release is None:
        raise KernelFetchError(f"{', '.join(d.name for d in debs)}: no vmlinux in it (not a ppc64el kernel)")
    pkg, _, version = names[0].partition(" ")
    kp = KernelPackage(key, pkg, version.split()[0], image, release, config, tuple(names), "archive")
    write_atomic(pinned, json.dumps(kp.to_json(), indent=1))
    return kp


# Up to 6.x the ELF image and config are /boot/vmlinux-<release> and /boot/config-<release> in
# linux-image-<release>; from the 7.x packaging split they are /usr/lib/modules/<release>/vmlinuz (an
# ELF vmlinux all the same on ppc64el) and .../config, in linux-binary-<release> and linux-base-<release>
# (linux-image-<release> holds no files).
KERNEL_MEMBERS_PPC64 = (
    "./boot/vmlinux-*",
    "./boot/config-*",
    "./usr/lib/modules/*/vmlinux",
    "./usr/lib/modules/*/vmlinuz",
    "./usr/lib/modules/*/config",
)


def _kernel_debs(archive: AptArchive, package: str, suite: str) -> tuple[list[Path], list[str]]:
    """The packages holding ``package``'s image and config: itself, or for the 7.x split its
    ``linux-binary-*`` and ``linux-base-*``; with ``"name version suite"`` lines."""
    release = package.removeprefix("linux-image-")
    split = [f"linux-binary-{release}", f"linux-base-{release}"]
    rows = archive.madison_many(split)
    wanted = split if all(any(s == suite for _v, s in rows[n]) for n in split) else [package]
    debs, names = [], []
    for name in wanted:
        deb, version = archive.download(name, suite)
        debs.append(deb)
        names.append(f"{name} {version} {suite}")
    return debs, names


def _find_vmlinux(dest: Path) -> tuple[Path | None, Path | None, str | None]:
    """``(vmlinux, config, release)`` in an unpacked ppc64el kernel, in either packaging layout."""
    for image in sorted([*dest.glob("usr/lib/modules/*/vmlinux"), *dest.glob("usr/lib/modules/*/vmlinuz")]):
        release = image.parent.name
        for config in (image.parent / "config", dest / "boot" / f"config-{release}"):
            if config.is_file():
                return image, config, release
        return image, None, release
    for image in sorted(dest.glob("boot/vmlinux-*")):
        release = image.name.removeprefix("vmlinux-")
        for config in (dest / "boot" / f"config-{release}", dest / "usr/lib/modules" / release / "config"):
            if config.is_file():
                return image, config, release
        return image, None, release
    return None, None, None


def kernel_from_debs(debs: Sequence[Path], dest: Path, key: str) -> KernelPackage:
    """A ppc64el kernel from the user's own ``linux-image-*-powerpc64le`` packages."""
    names = tuple(f"{deb_field(d, 'Package')} {deb_field(d, 'Version')}" for d in debs)
    for deb in debs:
        extract_from_deb(deb, dest, KERNEL_MEMBERS_PPC64, allow_missing=True, merge=True)
    image, config, release = _find_vmlinux(dest)
    if image is None or release is None:
        raise KernelFetchError(f"{', '.join(map(str, debs))}: no vmlinux in it (not a ppc64el kernel; from 7.x "
                               "the image is in linux-binary-<release> and the config in linux-base-<release>)")
    pkg, _, version = names[0].partition(" ")
    return KernelPackage(key, pkg, version, image, release, config, names, "deb")


@dataclass(frozen=True)
class Ppc64GuestTools:
    """busybox-static and kexec-tools for ppc64el, unpacked, with kexec's shared objects."""

    busybox: Path
    busybox_version: str
    kexec: Path
    kexec_version: str
    #: (guest path, host file) of the dynamic loader and every library kexec loads
    kexec_libraries: tuple[tuple[str, Path], ...]


def fetch_ppc64_guest_tools(archive: AptArchive) -> Ppc64GuestTools:
    """busybox-static (trixie) and kexec-tools with its library closure (sid), unpacked in the cache."""
    out = cache_dir() / "tools-ppc64el"
    bb_deb, bb_ver = archive.download("busybox-static", BUSYBOX_SUITE)
    kx_deb, kx_ver = archive.download("kexec-tools", KEXEC_SUITE)
    bb_dir = out / f"busybox-static_{bb_ver.replace(':', '_')}"
    kx_dir = out / f"kexec-tools_{kx_ver.replace(':', '_')}"
    if not (bb_dir / "bin/busybox").exists():
        extract_from_deb(bb_deb, bb_dir, ["./bin/busybox", "./usr/bin/busybox"], allow_missing=True)
    busybox = next((p for p in (bb_dir / "bin/busybox", bb_dir / "usr/bin/busybox") if p.exists()), None)
    kexec = next((p for p in (kx_dir / "sbin/kexec", kx_dir / "usr/sbin/kexec") if p.exists()), None)
    if kexec is None:
        extract_from_deb(kx_deb, kx_dir, ["./sbin/kexec", "./usr/sbin/kexec"], allow_missing=True)
        kexec = next((p for p in (kx_dir / "sbin/kexec", kx_dir / "usr/sbin/kexec") if p.exists()), None)
    if busybox is None or kexec is None:
        raise KernelFetchError("ppc64el busybox-static or kexec-tools did not unpack as expected")
    sysroot = out / f"kexec-tools_{kx_ver.replace(':', '_')}.sysroot"
    _library_closure(archive, "kexec-tools", KEXEC_SUITE, sysroot)
    return Ppc64GuestTools(busybox, bb_ver, kexec, kx_ver, tuple(shared_objects(kexec, sysroot)))


def _library_closure(archive: AptArchive, package: str, suite: str, sysroot: Path) -> None:
    """Unpack every ``lib*`` package of ``package``'s dependency closure into ``sysroot``
    (``lib64`` too: the ppc64 loader ``ld64.so.2`` lives there)."""
    stamp = sysroot / ".complete"
    if stamp.exists():
        return
    todo, seen, libs = [package], {package}, []
    while todo:
        for dep in archive.depends(todo.pop(), suite):
            if dep not in seen and dep.startswith("lib"):
                seen.add(dep)
                libs.append(dep)
                todo.append(dep)
    for lib in sorted(libs):
        deb, _ver = archive.download(lib, suite)
        members = ["./lib/*", "./usr/lib/*", "./lib64/*", "./usr/lib64/*"]
        extract_from_deb(deb, sysroot, members, allow_missing=True, merge=True)
    stamp.touch()


def _in_sysroot(sysroot: Path, guest_path: str) -> Path | None:
    """A guest path resolved inside ``sysroot`` (symbolic links followed within it; usrmerge)."""
    for cand in (guest_path, "/usr" + guest_path if not guest_path.startswith("/usr/") else guest_path):
        p = sysroot / cand.lstrip("/")
        for _ in range(16):
            if not p.is_symlink():
                break
            target = Path(str(p.readlink()))
            p = sysroot / str(target).lstrip("/") if target.is_absolute() else p.parent / target
        if p.is_file():
            return p
    return None


def shared_objects(binary: Path, sysroot: Path) -> list[tuple[str, Path]]:
    """(guest path, host file) of ``binary``'s interpreter and, transitively, its ``DT_NEEDED``
    libraries, found in ``sysroot`` under the ppc64el library directories."""
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    def needed(path: Path) -> tuple[str | None, list[str]]:
        with path.open("rb") as f:
            elf = ELFFile(f)
            interp = None
            seg: Any
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_INTERP":
                    interp = str(seg.get_interp_name())
            libs: list[str] = []
            for sec in elf.iter_sections():
                if isinstance(sec, DynamicSection):
                    tags: list[Any] = list(sec.iter_tags())
                    libs += [str(t.needed) for t in tags if t.entry.d_tag == "DT_NEEDED"]
            return interp, libs

    out: list[tuple[str, Path]] = []
    interp, todo = needed(binary)
    if interp is not None:
        host = _in_sysroot(sysroot, interp)
        if host is None:
            raise KernelFetchError(f"{binary.name}: its loader {interp} is not in {sysroot}")
        out.append((interp.lstrip("/"), host))
    seen: set[str] = set()
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.add(name)
        guest = f"/lib/{TRIPLET}/{name}"
        host = _in_sysroot(sysroot, guest)
        if host is None:
            raise KernelFetchError(f"{binary.name} needs {name}, which is not in {sysroot}")
        out.append((guest.lstrip("/"), host))
        todo += needed(host)[1]
    return out


def with_packages(kp: KernelPackage, *extra: str) -> KernelPackage:
    return replace(kp, packages=(*kp.packages, *extra))
