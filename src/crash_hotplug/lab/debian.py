"""Debian kernel and guest-tool packages, fetched with a private apt configuration.

Mirrors what ``apt-get download`` does for a user, but with its own ``sources.list``, lists,
archives and status under the cache (``~/.cache/crash-hotplug``, or ``$CRASH_HOTPLUG_CACHE``), so the
host's apt sources and state are never touched. The configuration is handed to apt through
``APT_CONFIG``, which apt reads before (and instead of) ``/etc/apt/apt.conf.d``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from crash_hotplug.lab.errors import KernelFetchError

__all__ = [
    "KERNEL_KEYS",
    "AptArchive",
    "GuestTools",
    "KernelPackage",
    "KernelSpec",
    "cache_dir",
    "default_archive",
    "extract_from_deb",
    "kernel_spec",
]

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SUITES: tuple[tuple[str, str], ...] = (
    ("main", "bookworm"),
    ("main", "bookworm-updates"),
    ("security", "bookworm-security"),
    ("main", "bookworm-backports"),
    ("main", "trixie"),
    ("main", "trixie-updates"),
    ("security", "trixie-security"),
    ("main", "trixie-backports"),
    ("main", "sid"),
)
# The order releases are looked up in: oldest stable first, its updates, its backports, then the
# next stable, its backports, then unstable. A release built for one suite (``+deb12``) is in it.
SUITE_ORDER: tuple[str, ...] = tuple(suite for _kind, suite in SUITES)
LISTS_MAX_AGE_S = 24 * 3600

Log = Callable[[str], None]


def cache_dir() -> Path:
    """The lab's cache: ``$CRASH_HOTPLUG_CACHE`` or ``~/.cache/crash-hotplug`` (outside any clone)."""
    env = os.environ.get("CRASH_HOTPLUG_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "crash-hotplug"
    base.mkdir(parents=True, exist_ok=True)
    return base


@dataclass(frozen=True)
class KernelSpec:
    """How a kernel key names Debian packages: a regex over package names, highest match wins."""

    key: str
    pattern: str
    suites: tuple[str, ...]
    note: str


KERNEL_KEYS: dict[str, KernelSpec] = {
    "6.1": KernelSpec(
        "6.1",
        r"linux-image-6\.1\.0-([0-9]+)-amd64-unsigned",
        ("bookworm", "bookworm-updates", "bookworm-security"),
        "bookworm 6.1 (no CONFIG_CRASH_HOTPLUG)",
    ),
    "6.12": KernelSpec(
        "6.12",
        r"linux-image-6\.12\.([0-9]+)\+deb13-amd64-unsigned",
        ("trixie", "trixie-updates", "trixie-security"),
        "trixie 6.12",
    ),
    "6.12-bpo": KernelSpec(
        "6.12-bpo",
        r"linux-image-6\.12\.([0-9]+)\+deb12-amd64-unsigned",
        ("bookworm-backports",),
        "bookworm-backports 6.12",
    ),
    "6.12.43": KernelSpec(
        "6.12.43",
        r"linux-image-6\.12\.(43)\+deb12-amd64(?:-unsigned)?",
        ("bookworm-backports",),
        "bookworm-backports 6.12.43 (the vectors' backports build)",
    ),
}

_EXACT_61 = re.compile(r"6\.1\.0-([0-9]+)")
_EXACT_612 = re.compile(r"6\.12\.([0-9]+)")


def kernel_spec(key: str) -> KernelSpec:
    """The package rule for a kernel key: ``6.1``, ``6.12``, ``6.12-bpo``, ``6.12.43``, or an exact
    ABI such as ``6.1.0-50`` or upstream version such as ``6.12.117``."""
    if key in KERNEL_KEYS:
        return KERNEL_KEYS[key]
    if m := _EXACT_61.fullmatch(key):
        return KernelSpec(
            key, rf"linux-image-6\.1\.0-({m[1]})-amd64-unsigned", KERNEL_KEYS["6.1"].suites, "bookworm 6.1"
        )
    if m := _EXACT_612.fullmatch(key):
        return KernelSpec(
            key,
            rf"linux-image-6\.12\.({m[1]})\+deb1[23]-amd64(?:-unsigned)?",
            ("trixie", "trixie-updates", "trixie-security", "bookworm-backports"),
            "6.12 from trixie or bookworm-backports",
        )
    known = ", ".join([*KERNEL_KEYS, "6.1.0-N", "6.12.N"])
    raise KernelFetchError(f"unknown kernel key {key!r}; known keys: {known}")


@dataclass(frozen=True)
class KernelPackage:
    """An unpacked kernel: its bzImage, its config where known, and where it came from."""

    key: str
    package: str
    version: str
    vmlinuz: Path
    release: str  # the uname -r string, e.g. 6.12.43+deb12-amd64
    config: Path | None = None
    packages: tuple[str, ...] = ()  # every package the files came from ("name version suite")
    origin: str = "archive"  # archive | deb | files

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["vmlinuz"] = str(self.vmlinuz)
        d["config"] = None if self.config is None else str(self.config)
        d["packages"] = list(self.packages)
        return d

    @classmethod
    def from_json(cls, meta: dict[str, Any]) -> KernelPackage:
        return cls(
            key=str(meta["key"]),
            package=str(meta["package"]),
            version=str(meta["version"]),
            vmlinuz=Path(meta["vmlinuz"]),
            release=str(meta["release"]),
            config=Path(meta["config"]) if meta.get("config") else None,
            packages=tuple(meta.get("packages", ())),
            origin=str(meta.get("origin", "archive")),
        )


@dataclass(frozen=True)
class GuestTools:
    """The guest userspace: busybox-static, kexec-tools and makedumpfile from bookworm, unpacked."""

    busybox: Path
    busybox_version: str
    kexec: Path
    kexec_version: str
    sysroot: Path  # the unpacked shared libraries kexec needs (its lib* dependency closure)
    #: the capture kernel's core collector and the libraries it loads (same closure rule)
    makedumpfile: Path | None = None
    makedumpfile_version: str = ""
    makedumpfile_sysroot: Path | None = None


class AptArchive:
    """A private apt set-up under ``root``: sources, lists, archives and an empty dpkg status.

    Every apt command runs with ``APT_CONFIG`` pointing at ``root/apt.conf``, which also replaces
    the host's ``apt.conf.d`` with an empty one of its own.
    """

    def __init__(
        self,
        root: Path,
        mirror: str | None = None,
        security_mirror: str | None = None,
        log: Log | None = None,
        arch: str = "amd64",
        suites: Sequence[tuple[str, str]] = SUITES,
    ) -> None:
        self.root = root
        #: the Debian architecture the lists and downloads are for (``ppc64el`` for the pseries lab)
        self.arch = arch
        self.suites = tuple(suites)
        self.mirror = mirror or os.environ.get("CRASH_HOTPLUG_DEBIAN_MIRROR", DEFAULT_MIRROR)
        self.security_mirror = security_mirror or os.environ.get(
            "CRASH_HOTPLUG_DEBIAN_SECURITY_MIRROR", DEFAULT_SECURITY_MIRROR
        )
        self._log = log or (lambda _msg: None)
        self._updated = False

    # -- configuration -------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.root / "apt.conf"

    def sources_list(self) -> str:
        """The private ``sources.list`` text: bookworm (+updates, security, backports) and trixie."""
        lines = []
        arch = "" if self.arch == "amd64" else f"arch={self.arch} "
        for kind, suite in self.suites:
            uri = self.security_mirror if kind == "security" else self.mirror
            lines.append(f"deb [{arch}signed-by={KEYRING}] {uri} {suite} main")
        return "\n".join(lines) + "\n"

    def apt_conf(self) -> str:
        """The private apt configuration: every ``Dir::`` apt writes to or reads sources from."""
        r = self.root
        items = {
            "Dir::Etc": f"{r}/etc",
            "Dir::Etc::main": "apt.conf",
            "Dir::Etc::parts": f"{r}/etc/apt.conf.d",
            "Dir::Etc::sourcelist": f"{r}/etc/sources.list",
            "Dir::Etc::sourceparts": f"{r}/etc/sources.list.d",
            "Dir::Etc::preferences": f"{r}/etc/preferences",
            "Dir::Etc::preferencesparts": f"{r}/etc/preferences.d",
            "Dir::State": f"{r}/state",
            "Dir::State::lists": f"{r}/lists",
            "Dir::State::status": f"{r}/state/status",
            "Dir::Cache": f"{r}/cache",
            "Dir::Cache::archives": f"{r}/archives",
            # apt's binary caches: without them every apt-cache call re-parses ~150 MB of lists.
            "Dir::Cache::pkgcache": f"{r}/cache/pkgcache.bin",
            "Dir::Cache::srcpkgcache": f"{r}/cache/srcpkgcache.bin",
            "Dir::Log": f"{r}/log",
            "Debug::NoLocking": "true",
            "APT::Sandbox::User": "root",
            "APT::Architecture": self.arch,
            "Acquire::Languages": "none",
            "Acquire::Check-Valid-Until": "false",
            "Acquire::Retries": "3",
            "Acquire::http::Timeout": "60",
        }
        body = "".join(f'{k} "{v}";\n' for k, v in items.items())
        return body + f'APT::Architectures {{ "{self.arch}"; }};\n'

    def ensure_layout(self) -> None:
        for sub in (
            "etc/apt.conf.d",
            "etc/sources.list.d",
            "etc/preferences.d",
            "state",
            "lists/partial",
            "cache",
            "archives/partial",
            "log",
        ):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        status = self.root / "state" / "status"
        if not status.exists():  # never touched again: a newer mtime makes apt rebuild its caches
            status.touch()
        self._write_if_changed(self.root / "etc" / "sources.list", self.sources_list())
        self._write_if_changed(self.config_path, self.apt_conf())

    @staticmethod
    def _write_if_changed(path: Path, text: str) -> None:
        if not path.exists() or path.read_text() != text:
            path.write_text(text)

    # -- commands ------------------------------------------------------------------------

    def _run(self, argv: Sequence[str], cwd: Path | None = None, timeout: float = 900) -> str:
        env = dict(os.environ, APT_CONFIG=str(self.config_path), DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
        try:
            proc = subprocess.run(
                list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except FileNotFoundError as exc:
            raise KernelFetchError(f"{argv[0]} is not installed (this lab needs Debian's apt)") from exc
        except subprocess.TimeoutExpired as exc:
            raise KernelFetchError(f"{' '.join(argv)} did not finish within {timeout:g} s") from exc
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip()[-1500:]
            raise KernelFetchError(f"{' '.join(argv)} failed ({proc.returncode}): {tail}")
        return proc.stdout

    def lists_fresh(self) -> bool:
        """The lists are less than a day old and were fetched for this very ``sources.list``."""
        stamp = self.root / "lists" / ".updated"
        try:
            fresh = time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE_S
            return fresh and stamp.read_text() == self._sources_digest()
        except OSError:
            return False

    def _sources_digest(self) -> str:
        return hashlib.sha256(self.sources_list().encode()).hexdigest()

    def update(self, force: bool = False) -> None:
        """``apt-get update`` into the private lists (skipped when they are less than a day old)."""
        self.ensure_layout()
        if self._updated or (not force and self.lists_fresh()):
            return
        self._log("apt-get update (private lists)")
        self._run(["apt-get", "-q", "update"])
        stamp = self.root / "lists" / ".updated"
        tmp = stamp.with_name(f".updated.{os.getpid()}")
        tmp.write_text(self._sources_digest())
        tmp.replace(stamp)
        self._updated = True

    def package_names(self, prefix: str) -> list[str]:
        self.update()
        out = self._run(["apt-cache", "pkgnames", prefix])
        return sorted(set(out.split()))

    def madison(self, package: str) -> list[tuple[str, str]]:
        """``(version, archive line)`` pairs apt knows for ``package``."""
        out = self._run(["apt-cache", "madison", package])
        rows = []
        for line in out.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) >= 3 and parts[0] == package:
                rows.append((parts[1], parts[2]))
        return rows

    def show(self, package: str, suite: str) -> str:
        """``apt-cache show`` of ``package`` as ``suite`` has it (empty if it does not)."""
        self.update()
        try:
            return self._run(["apt-cache", "show", f"{package}/{suite}"])
        except KernelFetchError:
            return ""

    def madison_many(self, packages: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
        """``madison`` of many packages in one apt call: name -> [(version, suite)]."""
        self.update()
        out: dict[str, list[tuple[str, str]]] = {p: [] for p in packages}
        names = list(packages)
        for i in range(0, len(names), 400):
            text = self._run(["apt-cache", "madison", *names[i : i + 400]])
            for line in text.splitlines():
                parts = [p.strip() for p in line.split("|")]
                if len(parts) >= 3 and parts[0] in out:
                    fields = parts[2].split()
                    suite = fields[1].split("/")[0] if len(fields) > 1 else ""
                    out[parts[0]].append((parts[1], suite))
        return out

    def download(self, package: str, suite: str | None = None) -> tuple[Path, str]:
        """Download ``package`` (from ``suite`` if given) into the archives dir; returns (deb, version)."""
        self.update()
        spec = f"{package}/{suite}" if suite else package
        rows = self.madison(package)
        if suite:
            rows = [r for r in rows if f" {suite}/" in f" {r[1]}"]
        if not rows:
            raise KernelFetchError(f"package {spec} is not in the archive lists")
        version = rows[0][0]
        archives = self.root / "archives"
        found = self._find_deb(archives, package, version)
        if found is None:
            self._log(f"downloading {package} {version}")
            self._run(["apt-get", "-q", "download", f"{package}={version}"], cwd=archives)
            found = self._find_deb(archives, package, version)
        if found is None:
            raise KernelFetchError(f"apt-get download {spec} left no .deb in {archives}")
        return found, version

    @staticmethod
    def _find_deb(archives: Path, package: str, version: str) -> Path | None:
        ver = version.replace(":", "%3a")
        for cand in archives.glob(f"{package}_*.deb"):
            if cand.name.startswith(f"{package}_{ver}_"):
                return cand
        return None

    # -- what the lab needs --------------------------------------------------------------

    def resolve_kernel(self, key: str) -> tuple[str, str]:
        """The (package, suite) a kernel key names: the highest matching package in its suites."""
        spec = kernel_spec(key)
        self.update()
        rx = re.compile(spec.pattern)
        # Highest ABI/version first; then unsigned over signed; then the spec's suite order.
        best: tuple[int, int, int, str, str] | None = None
        for name in self.package_names("linux-image-6."):
            m = rx.fullmatch(name)
            if not m:
                continue
            for _version, line in self.madison(name):
                rank = next((i for i, s in enumerate(spec.suites) if f" {s}/" in f" {line}"), None)
                if rank is None:
                    continue
                unsigned = 1 if name.endswith("-unsigned") else 0
                cand = (int(m[1]), unsigned, -rank, name, spec.suites[rank])
                if best is None or cand[:3] > best[:3]:
                    best = cand
        if best is None:
            raise KernelFetchError(
                f"no package matching {spec.pattern} in {', '.join(spec.suites)} for kernel key {key!r}"
            )
        return best[3], best[4]

    def fetch_kernel(self, key: str) -> KernelPackage:
        """Resolve, download and unpack the bzImage and config of a kernel key (cached by package
        and version)."""
        meta_root = cache_dir_of(self.root) / "kernels"
        pinned = meta_root / f"key-{key}.json"
        if pinned.exists() and self.lists_fresh():
            with contextlib.suppress(KeyError, ValueError, TypeError):
                kp = KernelPackage.from_json({"key": key, **json.loads(pinned.read_text())})
                if kp.vmlinuz.exists() and kp.config is not None and kp.config.exists():
                    return kp
        package, suite = self.resolve_kernel(key)
        deb, version = self.download(package, suite)
        dest = meta_root / f"{package}_{_dirsafe(version)}"
        kp = unpack_kernel([deb], dest, key=key, log=self._log)
        kp = replace(kp, package=package, version=version, packages=(f"{package} {version} {suite}",))
        write_atomic(pinned, json.dumps(kp.to_json(), indent=1))
        return kp

    def fetch_guest_tools(self) -> GuestTools:
        """busybox-static and kexec-tools from bookworm, as the vectors' guests had."""
        out = cache_dir_of(self.root) / "tools"
        bb_deb, bb_ver = self.download("busybox-static", "bookworm")
        kx_deb, kx_ver = self.download("kexec-tools", "bookworm")
        bb_dir = out / f"busybox-static_{_dirsafe(bb_ver)}"
        kx_dir = out / f"kexec-tools_{_dirsafe(kx_ver)}"
        if not (bb_dir / "bin" / "busybox").exists():
            extract_from_deb(bb_deb, bb_dir, ["./bin/busybox"])
        kexec = _first_existing(kx_dir, ["sbin/kexec", "usr/sbin/kexec"])
        if kexec is None:
            extract_from_deb(kx_deb, kx_dir, ["./sbin/kexec", "./usr/sbin/kexec"], allow_missing=True)
            kexec = _first_existing(kx_dir, ["sbin/kexec", "usr/sbin/kexec"])
        if kexec is None or not (bb_dir / "bin" / "busybox").exists():
            raise KernelFetchError("busybox-static or kexec-tools did not unpack as expected")
        sysroot = self.library_closure("kexec-tools", "bookworm", out / f"kexec-tools_{_dirsafe(kx_ver)}.sysroot")
        md_deb, md_ver = self.download("makedumpfile", "bookworm")
        md_dir = out / f"makedumpfile_{_dirsafe(md_ver)}"
        makedumpfile = _first_existing(md_dir, ["usr/bin/makedumpfile", "usr/sbin/makedumpfile"])
        if makedumpfile is None:
            extract_from_deb(md_deb, md_dir, ["./usr/bin/makedumpfile", "./usr/sbin/makedumpfile"], allow_missing=True)
            makedumpfile = _first_existing(md_dir, ["usr/bin/makedumpfile", "usr/sbin/makedumpfile"])
        if makedumpfile is None:
            raise KernelFetchError("makedumpfile did not unpack as expected")
        md_sysroot = self.library_closure("makedumpfile", "bookworm", out / f"makedumpfile_{_dirsafe(md_ver)}.sysroot")
        return GuestTools(bb_dir / "bin" / "busybox", bb_ver, kexec, kx_ver, sysroot, makedumpfile, md_ver, md_sysroot)

    def depends(self, package: str, suite: str) -> list[str]:
        """The first alternative of each ``Depends`` of ``package`` in ``suite`` (virtuals dropped)."""
        out = self._run(["apt-cache", "depends", "--no-recommends", "--no-suggests", f"{package}/{suite}"])
        deps: list[str] = []
        alternative = False
        for line in out.splitlines():
            m = re.match(r"\s*(\|?)Depends: (\S+)", line)
            if not m:
                continue
            name = m[2]
            if not alternative and not name.startswith("<"):
                deps.append(name.split(":")[0])
            alternative = m[1] == "|"
        return deps

    def library_closure(self, package: str, suite: str, sysroot: Path) -> Path:
        """Download and unpack every ``lib*`` package in the dependency closure of ``package``.

        The result is a sysroot whose ``lib`` and ``usr/lib`` hold the shared objects a dynamic
        binary of ``package`` loads, all from the same suite.
        """
        stamp = sysroot / ".complete"
        if stamp.exists():
            return sysroot
        todo, seen = [package], {package}
        libs: list[str] = []
        while todo:
            for dep in self.depends(todo.pop(), suite):
                if dep in seen or not dep.startswith("lib"):
                    continue
                seen.add(dep)
                libs.append(dep)
                todo.append(dep)
        for lib in sorted(libs):
            deb, _ver = self.download(lib, suite)
            extract_from_deb(deb, sysroot, ["./lib/*", "./usr/lib/*"], allow_missing=True, merge=True)
        stamp.touch()
        return sysroot


def cache_dir_of(apt_root: Path) -> Path:
    """The cache directory that holds a private apt root (its parent)."""
    return apt_root.parent


def _dirsafe(version: str) -> str:
    """A Debian version usable in a directory name that may end up in a search path (no ``:``)."""
    return version.replace(":", "_")


def _first_existing(base: Path, rels: Sequence[str]) -> Path | None:
    for rel in rels:
        if (base / rel).exists():
            return base / rel
    return None


def extract_from_deb(
    deb: Path, dest: Path, members: Sequence[str], allow_missing: bool = False, merge: bool = False
) -> None:
    """Unpack the ``members`` (tar wildcards) of a ``.deb`` into ``dest`` with dpkg-deb and tar.

    Without ``merge`` the unpacked top-level entries replace those in ``dest``; with it, the
    archive is unpacked straight into ``dest`` on top of what is there.
    """
    if shutil.which("dpkg-deb") is None:
        raise KernelFetchError("dpkg-deb is not installed")
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest if merge else dest.with_name(dest.name + ".partial")
    if not merge:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as deb_proc:
        tar = subprocess.run(
            ["tar", "-x", "-C", str(tmp), "--wildcards", *members],
            stdin=deb_proc.stdout,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if deb_proc.stdout is not None:
            deb_proc.stdout.close()
    if tar.returncode != 0 and not (allow_missing and "Not found in archive" in tar.stderr):
        raise KernelFetchError(f"unpacking {deb.name}: {tar.stderr.strip()[-800:]}")
    if merge:
        return
    for child in tmp.iterdir():
        target = dest / child.name
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        child.rename(target)
    tmp.rmdir()


# Where Debian kernel packages keep the image and the config: /boot up to 6.x, and from the 7.x
# packaging split /usr/lib/modules/<release>/ (linux-binary-<release>, linux-base-<release>).
KERNEL_MEMBERS = (
    "./boot/vmlinuz-*",
    "./boot/config-*",
    "./usr/lib/modules/*/vmlinuz",
    "./usr/lib/modules/*/config",
)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary name and a rename (the cache is shared)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def deb_field(deb: Path, name: str) -> str:
    """One control field of a ``.deb`` (``dpkg-deb -f``); ``KernelFetchError`` if it is no package."""
    if shutil.which("dpkg-deb") is None:
        raise KernelFetchError("dpkg-deb is not installed")
    proc = subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["unreadable"])[-1].removeprefix("dpkg-deb: error: ")
        raise KernelFetchError(f"{deb}: not a Debian package ({why})")
    return proc.stdout.strip()


def find_kernel_files(dest: Path) -> tuple[Path | None, Path | None, str | None]:
    """``(vmlinuz, config, release)`` in an unpacked kernel tree, in either packaging layout."""
    for vmlinuz in sorted(dest.glob("usr/lib/modules/*/vmlinuz")):
        release = vmlinuz.parent.name
        config = dest / "usr/lib/modules" / release / "config"
        if not config.exists():
            config = dest / "boot" / f"config-{release}"
        return vmlinuz, config if config.exists() else None, release
    for vmlinuz in sorted(dest.glob("boot/vmlinuz-*")):
        release = vmlinuz.name.removeprefix("vmlinuz-")
        config = dest / "boot" / f"config-{release}"
        if not config.exists():
            config = dest / "usr/lib/modules" / release / "config"
        return vmlinuz, config if config.exists() else None, release
    configs = sorted(dest.glob("usr/lib/modules/*/config")) + sorted(dest.glob("boot/config-*"))
    return None, configs[0] if configs else None, None


def unpack_kernel(debs: Sequence[Path], dest: Path, key: str, log: Log | None = None) -> KernelPackage:
    """Unpack the image and config of one kernel from ``debs`` (one or, for the 7.x split,
    ``linux-binary-*`` + ``linux-base-*``) into ``dest``; cached when ``dest`` already holds them."""
    names = [f"{deb_field(d, 'Package')} {deb_field(d, 'Version')}" for d in debs]
    vmlinuz, config, release = find_kernel_files(dest)
    if vmlinuz is None or not (dest / ".complete").exists():
        shutil.rmtree(dest, ignore_errors=True)
        tmp = dest.with_name(f"{dest.name}.partial.{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        for deb in debs:
            if log:
                log(f"unpacking {deb.name}")
            extract_from_deb(deb, tmp, KERNEL_MEMBERS, allow_missing=True, merge=True)
        (tmp / ".complete").touch()
        tmp.rename(dest)
        vmlinuz, config, release = find_kernel_files(dest)
    if vmlinuz is None or release is None:
        shutil.rmtree(dest, ignore_errors=True)
        what = ", ".join(f"{d} ({n})" for d, n in zip(debs, names, strict=True))
        hint = ""
        if any(n.startswith("linux-image-") for n in names):
            hint = "; from 7.x the image is in linux-binary-<release> and the config in linux-base-<release>"
        raise KernelFetchError(
            f"{what}: no kernel image in it (boot/vmlinuz-* or usr/lib/modules/<release>/vmlinuz){hint}"
        )
    pkg, _, version = names[0].partition(" ")
    return KernelPackage(
        key=key,
        package=pkg,
        version=version,
        vmlinuz=vmlinuz,
        release=release,
        config=config,
        packages=tuple(names),
        origin="archive",
    )


def default_archive(log: Log | None = None) -> AptArchive:
    """The private apt set-up in the lab cache."""
    return AptArchive(cache_dir() / "apt", log=log)
