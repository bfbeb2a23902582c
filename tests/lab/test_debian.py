"""The private apt set-up and the kernel keys (no network)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from crash_hotplug.lab.debian import AptArchive, cache_dir, kernel_spec
from crash_hotplug.lab.errors import KernelFetchError


def test_cache_dir_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRASH_HOTPLUG_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert (tmp_path / "c").is_dir()


def test_private_apt_config_points_only_inside_its_root(tmp_path: Path) -> None:
    apt = AptArchive(tmp_path / "apt", mirror="http://mirror.invalid/debian")
    apt.ensure_layout()
    conf = apt.config_path.read_text()
    dirs = dict(re.findall(r'^(Dir::\S+) "([^"]*)";$', conf, re.M))
    for key in ("Dir::Etc::parts", "Dir::Etc::sourcelist", "Dir::Etc::sourceparts", "Dir::State::lists",
                "Dir::State::status", "Dir::Cache::archives"):
        assert dirs[key].startswith(str(tmp_path / "apt")), key
    assert '"/etc/apt' not in conf  # nothing of the host's apt configuration
    sources = (tmp_path / "apt" / "etc" / "sources.list").read_text()
    for suite in ("bookworm", "bookworm-backports", "trixie", "bookworm-security", "trixie-backports", "sid"):
        assert f" {suite} main" in sources
    assert "http://mirror.invalid/debian bookworm main" in sources
    assert (tmp_path / "apt" / "state" / "status").read_text() == ""
    assert (tmp_path / "apt" / "etc" / "apt.conf.d").is_dir()


@pytest.mark.parametrize(
    ("key", "name", "matches"),
    [
        ("6.1", "linux-image-6.1.0-50-amd64-unsigned", True),
        ("6.1", "linux-image-6.1.0-50-cloud-amd64-unsigned", False),
        ("6.1", "linux-image-6.1.0-50-amd64", False),
        ("6.12", "linux-image-6.12.117+deb13-amd64-unsigned", True),
        ("6.12", "linux-image-6.12.117+deb12-amd64-unsigned", False),
        ("6.12-bpo", "linux-image-6.12.95+deb12-amd64-unsigned", True),
        ("6.12.43", "linux-image-6.12.43+deb12-amd64", True),
        ("6.12.43", "linux-image-6.12.44+deb12-amd64", False),
        ("6.1.0-50", "linux-image-6.1.0-50-amd64-unsigned", True),
        ("6.1.0-50", "linux-image-6.1.0-51-amd64-unsigned", False),
        ("6.12.117", "linux-image-6.12.117+deb13-amd64-unsigned", True),
    ],
)
def test_kernel_keys(key: str, name: str, matches: bool) -> None:
    assert bool(re.fullmatch(kernel_spec(key).pattern, name)) is matches


def test_unknown_kernel_key() -> None:
    with pytest.raises(KernelFetchError, match=r"unknown kernel key '5\.10'"):
        kernel_spec("5.10")
