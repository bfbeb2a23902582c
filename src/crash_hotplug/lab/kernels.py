"""Which kernel a run boots: a Debian release in the archive, ``.deb`` files a user has, or a
bzImage and config of their own; and the list of what the archive offers (``lab kernels``).

Debian names a kernel build by its release (``uname -r``): ``7.3.4+deb13-amd64`` is built for
trixie (``deb13``) and lives in trixie-backports. Up to 6.x, ``linux-image-<release>`` holds
``/boot/vmlinuz-<release>`` and ``/boot/config-<release>``. From the 7.x packaging split,
``linux-image-<release>`` holds no files: the image is ``/usr/lib/modules/<release>/vmlinuz`` in
``linux-binary-<release>`` and the config is ``/usr/lib/modules/<release>/config`` in
``linux-base-<release>`` (6.19 already has ``linux-binary``, with the image still in ``/boot``).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from crash_hotplug.lab.debian import (
    KERNEL_KEYS,
    SUITE_ORDER,
    AptArchive,
    KernelPackage,
    Log,
    cache_dir_of,
    extract_from_deb,
    find_kernel_files,
    unpack_kernel,
    write_atomic,
)
from crash_hotplug.lab.errors import KernelFetchError
from crash_hotplug.lab.kconfig import KernelConfig, bzimage_version, hotplug_verdict

__all__ = [
    "ArchiveKernel",
    "KernelRequest",
    "archive_kernels",
    "check_key",
    "config_of",
    "fetch_archive_kernel",
    "is_release",
    "pick_release",
    "usable_or_raise",
]

FLAVOURS = ("amd64", "cloud-amd64", "rt-amd64")
_RELEASE_RE = re.compile(r"([0-9]+\.[0-9]+\.[0-9]+[\w.+~-]*?)-((?:cloud-|rt-)?amd64)")
_UPSTREAM_RE = re.compile(r"([0-9]+)\.([0-9]+)(?:\.([0-9]+))?")
# A config at most this big is fetched for ``lab kernels`` without asking (linux-base, linux-config).
SMALL_PACKAGE = 8 << 20


def is_release(key: str) -> bool:
    """A full Debian release string (``6.18.15+deb13-amd64``, ``6.1.0-50-amd64``)."""
    return _RELEASE_RE.fullmatch(key) is not None


def _upstream(release: str) -> tuple[int, int, int]:
    """Upstream version of a release; ``6.1.0-50-amd64`` is 6.1.0 (its ABI name), with the ABI
    number as the third field so that newer ABIs sort higher."""
    if m := re.match(r"([0-9]+)\.([0-9]+)\.0-([0-9]+)-", release):
        return int(m[1]), int(m[2]), int(m[3])
    m = _UPSTREAM_RE.match(release)
    if not m:
        return 0, 0, 0
    return int(m[1]), int(m[2]), int(m[3] or 0)


@dataclass(frozen=True)
class ArchiveKernel:
    """One kernel release the archive has, and the packages that hold its files."""

    release: str
    version: str  # Debian package version of its linux-image package
    suite: str
    image: str  # the linux-image package a user installs
    binary: str | None  # linux-binary-<release> (the 7.x split): the image is here
    base: str | None  # linux-base-<release>: the config is here
    image_size: int | None = None  # .deb size of the image package, when known

    @property
    def split(self) -> bool:
        return self.binary is not None

    def packages_for_boot(self) -> list[str]:
        """The packages whose files make the image and config, in extraction order."""
        if self.binary is not None:
            return [self.binary, *([self.base] if self.base else [])]
        return [self.image, *([self.base] if self.base else [])]

    def to_json(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "version": self.version,
            "suite": self.suite,
            "image": self.image,
            "binary": self.binary,
            "base": self.base,
        }


def _first_suite(rows: list[tuple[str, str]]) -> tuple[str, str] | None:
    ranked = [(SUITE_ORDER.index(s), v, s) for v, s in rows if s in SUITE_ORDER]
    if not ranked:
        return None
    _i, version, suite = min(ranked)
    return version, suite


def archive_kernels(archive: AptArchive, flavours: Sequence[str] = ("amd64",)) -> list[ArchiveKernel]:
    """Every kernel release of ``flavours`` in the private archive, oldest upstream version first."""
    images = archive.package_names("linux-image-")
    binaries = set(archive.package_names("linux-binary-"))
    bases = set(archive.package_names("linux-base-"))
    by_release: dict[str, list[str]] = {}
    for name in images:
        rest = name.removeprefix("linux-image-")
        unsigned = rest.endswith("-unsigned")
        rel = rest.removesuffix("-unsigned")
        m = _RELEASE_RE.fullmatch(rel)
        if not m or m[2] not in flavours:
            continue
        by_release.setdefault(rel, []).append(name if not unsigned else f"~{name}")
    names = [n.lstrip("~") for ns in by_release.values() for n in ns]
    rows = archive.madison_many(names)
    out: list[ArchiveKernel] = []
    for rel, cands in by_release.items():
        # The package a user installs first (signed), the -unsigned build only where it is alone.
        for cand in sorted(cands):
            name = cand.lstrip("~")
            found = _first_suite(rows.get(name, []))
            if found is None:
                continue
            version, suite = found
            binary = next((b for b in (f"linux-binary-{rel}", f"linux-binary-unsigned-{rel}") if b in binaries), None)
            base = f"linux-base-{rel}" if f"linux-base-{rel}" in bases else None
            out.append(ArchiveKernel(rel, version, suite, name, binary, base))
            break
    out.sort(key=lambda k: (_upstream(k.release), SUITE_ORDER.index(k.suite), k.release))
    return out


def pick_release(kernels: Sequence[ArchiveKernel], key: str) -> ArchiveKernel:
    """The archive kernel a key names: a full release, an upstream ``X.Y.Z`` (the first suite in
    ``SUITE_ORDER`` that has it), or ``X.Y`` (its newest ``X.Y.Z``)."""
    if is_release(key):
        hit = next((k for k in kernels if k.release == key), None)
        if hit is None:
            raise KernelFetchError(
                f"kernel {key}: not in the archive (searched {', '.join(SUITE_ORDER)}); "
                "'crash-hotplug lab kernels' lists the releases it has"
            )
        return hit
    check_key(key)
    m = _UPSTREAM_RE.fullmatch(key)
    assert m is not None
    want = (int(m[1]), int(m[2]), int(m[3]) if m[3] else None)
    plain = [k for k in kernels if "+deb" in k.release and _RELEASE_RE.fullmatch(k.release)]
    cands = [
        k
        for k in plain
        if (m2 := _RELEASE_RE.fullmatch(k.release)) is not None
        and m2[2] == "amd64"
        and _upstream(k.release)[:2] == want[:2]
        and (want[2] is None or _upstream(k.release)[2] == want[2])
    ]
    if not cands:
        raise KernelFetchError(
            f"kernel {key}: no such release in the archive (searched {', '.join(SUITE_ORDER)}); "
            "'crash-hotplug lab kernels' lists the releases it has"
        )
    if want[2] is None:
        newest = max(_upstream(k.release) for k in cands)
        cands = [k for k in cands if _upstream(k.release) == newest]
    return min(cands, key=lambda k: SUITE_ORDER.index(k.suite))


def check_key(key: str) -> None:
    """``KernelFetchError`` unless ``key`` has the form of a kernel key (before any download)."""
    if key in KERNEL_KEYS or is_release(key) or re.fullmatch(r"6\.1\.0-[0-9]+|[0-9]+\.[0-9]+(?:\.[0-9]+)?", key):
        return
    known = ", ".join([*KERNEL_KEYS, "6.1.0-N", "X.Y", "X.Y.Z", "a release such as 7.3.4+deb13-amd64"])
    raise KernelFetchError(f"unknown kernel key {key!r}; known keys: {known}")


def _kernel_dir(archive: AptArchive, name: str) -> Path:
    return cache_dir_of(archive.root) / "kernels" / name


def fetch_archive_kernel(archive: AptArchive, kernel: ArchiveKernel, key: str) -> KernelPackage:
    """Download and unpack the image and config of an archive kernel (cached per release and version)."""
    debs: list[Path] = []
    names: list[str] = []
    for pkg in kernel.packages_for_boot():
        deb, version = archive.download(pkg, kernel.suite)
        debs.append(deb)
        names.append(f"{pkg} {version} {kernel.suite}")
    dest = _kernel_dir(archive, f"{kernel.release}_{kernel.version.replace(':', '_')}")
    kp = unpack_kernel(debs, dest, key=key, log=archive._log)
    if kp.release != kernel.release:
        raise KernelFetchError(f"{debs[0]}: holds kernel {kp.release}, not {kernel.release}")
    return replace(kp, package=kernel.image, version=kernel.version, packages=tuple(names))


def config_of(archive: AptArchive, kernel: ArchiveKernel, allow_large: bool) -> tuple[KernelConfig | None, str]:
    """A kernel's config for ``lab kernels``: ``(config, where)``; ``None`` with the reason when it
    could not be read without downloading more than ``SMALL_PACKAGE`` (unless ``allow_large``)."""
    cfg_dir = _kernel_dir(archive, "configs")
    cached = cfg_dir / f"config-{kernel.release}_{kernel.version.replace(':', '_')}"
    if cached.exists():
        return KernelConfig.read(cached), "cached"
    unpacked = _kernel_dir(archive, f"{kernel.release}_{kernel.version.replace(':', '_')}")
    _v, config, _r = find_kernel_files(unpacked)
    if config is not None and (unpacked / ".complete").exists():
        return KernelConfig.read(config), "unpacked"
    from_config_pkg = _config_from_linux_config(archive, kernel, cached)
    if from_config_pkg is not None:
        return KernelConfig.read(cached), from_config_pkg
    sources = [p for p in (kernel.base,) if p] or ([] if kernel.split else [kernel.image])
    if not sources:
        return None, "no package in the archive holds its config"
    pkg = sources[0]
    size = _deb_size(archive, pkg, kernel.suite)
    if size is not None and size > SMALL_PACKAGE and not allow_large:
        return None, f"only in {pkg} ({size >> 20} MiB; --fetch-images reads it)"
    deb, _version = archive.download(pkg, kernel.suite)
    tmp = cfg_dir / f".x-{kernel.release}"
    extract_from_deb(deb, tmp, ["./boot/config-*", "./usr/lib/modules/*/config"], allow_missing=True)
    _v, config, _r = find_kernel_files(tmp)
    if config is None:
        return None, f"{pkg} has no config"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    config.replace(cached)
    return KernelConfig.read(cached), pkg


def _config_from_linux_config(archive: AptArchive, kernel: ArchiveKernel, dest: Path) -> str | None:
    """Where no ``linux-base`` package holds it, the config Debian built the kernel with is in
    ``linux-config-X.Y`` (``/usr/src/linux-config-X.Y/config.<arch>_<featureset>_<flavour>.xz``)
    when that package is of the very same source version; written to ``dest``, the source named."""
    if kernel.base is not None:
        return None
    m = _RELEASE_RE.fullmatch(kernel.release)
    mm = re.match(r"([0-9]+\.[0-9]+)", kernel.release)
    if m is None or mm is None:
        return None
    pkg = f"linux-config-{mm[1]}"
    rows = archive.madison_many([pkg]).get(pkg, [])
    suite = next((s for v, s in rows if v == kernel.version), None)
    if suite is None:
        return None
    flavour = m[2]
    member = {"rt-amd64": "amd64_rt_amd64"}.get(flavour, f"amd64_none_{flavour}")
    deb, _version = archive.download(pkg, suite)
    tmp = dest.with_name(f".x-{kernel.release}-config")
    extract_from_deb(deb, tmp, [f"./usr/src/{pkg}/config.{member}.xz"], allow_missing=True)
    xz = tmp / "usr" / "src" / pkg / f"config.{member}.xz"
    if not xz.exists():
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part")
    part.write_bytes(lzma.decompress(xz.read_bytes()))
    part.replace(dest)
    return f"{pkg} {kernel.version}"


def _deb_size(archive: AptArchive, package: str, suite: str) -> int | None:
    text = archive.show(package, suite)
    m = re.search(r"^Size: ([0-9]+)$", text, re.M)
    return int(m[1]) if m else None


@dataclass(frozen=True)
class KernelRequest:
    """What the user named: a key or release (``key``), ``.deb`` files, or a bzImage + config."""

    key: str | None = None
    debs: tuple[Path, ...] = ()
    vmlinuz: Path | None = None
    config: Path | None = None

    def __post_init__(self) -> None:
        given = sum([self.key is not None, bool(self.debs), self.vmlinuz is not None])
        if given != 1:
            raise KernelFetchError("name exactly one kernel: --kernel VERSION, --kernel-deb FILE..., or --vmlinuz")
        if self.vmlinuz is not None and self.config is None:
            raise KernelFetchError(f"{self.vmlinuz}: --vmlinuz needs --config FILE (the kernel's .config)")
        if self.config is not None and self.vmlinuz is None:
            raise KernelFetchError("--config goes with --vmlinuz")

    @property
    def label(self) -> str:
        """A short name for run directories."""
        if self.key is not None:
            return self.key
        if self.debs:
            return self.debs[0].name.split("_")[0]
        assert self.vmlinuz is not None
        return self.vmlinuz.name

    def check_files(self) -> None:
        """The user's files exist and are what they claim, before anything is downloaded."""
        for f in (*self.debs, *(x for x in (self.vmlinuz, self.config) if x is not None)):
            if not f.is_file():
                raise KernelFetchError(f"{f}: no such file")
        if self.vmlinuz is not None:
            bzimage_version(self.vmlinuz)
        if self.config is not None:
            KernelConfig.read(self.config)
        if self.key is not None:
            from crash_hotplug.lab.debian_ppc64 import is_ppc64_key

            if not is_ppc64_key(self.key):  # a ppc64el kernel is looked up by the pseries lab
                check_key(self.key)

    def fetch(self, archive: AptArchive, log: Log | None = None) -> KernelPackage:
        """The kernel on disk, with its release and config."""
        self.check_files()
        if self.vmlinuz is not None:
            version = bzimage_version(self.vmlinuz)
            release = version.split()[0]
            return KernelPackage(
                key=self.label,
                package=f"(file {self.vmlinuz})",
                version=version,
                vmlinuz=self.vmlinuz.resolve(),
                release=release,
                config=self.config.resolve() if self.config else None,
                packages=(),
                origin="files",
            )
        if self.debs:
            h = hashlib.sha256()
            for d in self.debs:
                h.update(str(d.resolve()).encode())
                st = d.stat()
                h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            dest = _kernel_dir(archive, f"deb-{h.hexdigest()[:16]}")
            kp = unpack_kernel(list(self.debs), dest, key=self.label, log=log)
            return replace(kp, key=kp.release, origin="deb")
        assert self.key is not None
        key = self.key
        if key in KERNEL_KEYS or re.fullmatch(r"6\.1\.0-[0-9]+|6\.12\.[0-9]+", key):
            return archive.fetch_kernel(key)
        pinned = _kernel_dir(archive, f"key-{key}.json")
        if pinned.exists() and archive.lists_fresh():
            cached: KernelPackage | None
            try:
                cached = KernelPackage.from_json({"key": key, **json.loads(pinned.read_text())})
            except (KeyError, ValueError, TypeError):
                cached = None
            if cached is not None and cached.vmlinuz.exists():
                return cached
        kernel = pick_release(archive_kernels(archive), key)
        kp = fetch_archive_kernel(archive, kernel, key)
        write_atomic(pinned, json.dumps(kp.to_json(), indent=1))
        return kp


def usable_or_raise(kernel: KernelPackage) -> tuple[str, KernelConfig | None]:
    """The kernel's crash-hotplug mode and config; ``KernelFetchError`` when it cannot serve the lab."""
    config = KernelConfig.read(kernel.config) if kernel.config is not None else None
    mode, refusal = hotplug_verdict(kernel.release, config)
    if refusal is not None:
        raise KernelFetchError(refusal)
    return mode, config
