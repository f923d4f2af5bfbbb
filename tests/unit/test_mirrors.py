"""Where packages come from: the host's apt sources, the variables that override them, and
what reaches mmdebstrap and the Dockerfiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools import mirrors

BOOKWORM = 'ID=debian\nVERSION_CODENAME=bookworm\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'
DEB822 = """\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
# Repositories that are not Debian's archive, though their suites look like it.
THIRD_PARTY = """\
Types: deb
URIs: https://vendor.example/apt/debian
Suites: bookworm
Components: main
Signed-By: /etc/apt/keyrings/vendor.gpg

Types: deb-src
URIs: http://src-only.example/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
Enabled: no
"""


def host(tmp_path: Path, files: dict[str, str], release: str = BOOKWORM) -> tuple[Path, Path]:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (apt / name).write_text(text)
    release_file = tmp_path / "os-release"
    release_file.write_text(release)
    return apt, release_file


def resolve(
    tmp_path: Path,
    files: dict[str, str],
    env: dict[str, str] | None = None,
    release: str = BOOKWORM,
    host_proxies: dict[str, str] | None = None,
) -> mirrors.Mirrors:
    apt, release_file = host(tmp_path, files, release)
    return mirrors.resolve(env or {}, apt, release_file, lambda: host_proxies or {})


def test_deb822_sources_give_the_mirror_and_the_security_archive(tmp_path: Path) -> None:
    found = resolve(tmp_path, {"sources.list.d/debian.sources": DEB822})
    origin = str(tmp_path / "apt/sources.list.d/debian.sources")
    assert found.debian == mirrors.Origin("http://mirror.example/debian", origin)
    assert found.security == mirrors.Origin("http://mirror.example/debian-security", origin)
    assert found.build_args() == {
        "DEBIAN_MIRROR": "http://mirror.example/debian",
        "DEBIAN_SECURITY_MIRROR": "http://mirror.example/debian-security",
    }
    assert found.mmdebstrap_args("trixie") == [
        "deb http://mirror.example/debian trixie main",
        "deb http://mirror.example/debian trixie-updates main",
        "deb http://mirror.example/debian-security trixie-security main",
    ]


def test_one_line_sources_with_options_and_comments(tmp_path: Path) -> None:
    sources_list = (
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://one-line.example/debian/ bookworm main contrib  # the archive\n"
        "deb http://one-line.example/debian-security bookworm-security main\n"
    )
    found = resolve(tmp_path, {"sources.list": sources_list})
    assert found.debian.value == "http://one-line.example/debian"
    assert found.debian.origin.endswith("apt/sources.list")
    assert found.security is not None
    assert found.security.value == "http://one-line.example/debian-security"


def test_other_repositories_are_not_taken_for_debians_archive(tmp_path: Path) -> None:
    files = {
        # Listed before Debian's own source, as apt reads sources.list.d by name.
        "sources.list.d/aaa-vendor.sources": THIRD_PARTY,
        "sources.list.d/browser.list": "deb http://browser.example/deb/ stable main\n",
        "sources.list.d/containers.list": "deb http://containers.example/debian bookworm stable\n",
        "sources.list.d/debian.sources": DEB822,
        "sources.list.d/old.list.disabled": "deb http://old.example/debian bookworm main\n",
    }
    assert resolve(tmp_path, files).debian.value == "http://mirror.example/debian"


def test_a_host_that_names_its_release_stable(tmp_path: Path) -> None:
    lines = (
        "deb http://m.example/debian stable main\ndeb http://m.example/ds stable-security main\n"
    )
    found = resolve(tmp_path, {"sources.list": lines})
    assert found.debian.value == "http://m.example/debian"
    assert found.security is not None and found.security.value == "http://m.example/ds"


def test_debian_mirror_overrides_the_host_and_drops_its_security_archive(
    tmp_path: Path,
) -> None:
    files = {"sources.list.d/debian.sources": DEB822}
    found = resolve(tmp_path, files, {"DEBIAN_MIRROR": "https://internal.example:8443/debian/"})
    assert found.debian == mirrors.Origin("https://internal.example:8443/debian", "DEBIAN_MIRROR")
    # The host's security archive may be out of reach for whoever names another mirror.
    assert found.security is None
    assert found.build_args()["DEBIAN_SECURITY_MIRROR"] == ""
    assert len(found.mmdebstrap_args("trixie")) == 2

    env = {
        "DEBIAN_MIRROR": "http://internal.example/debian",
        "DEBIAN_SECURITY_MIRROR": "http://internal.example/debian-security",
    }
    found = resolve(tmp_path, files, env)
    assert found.security == mirrors.Origin(
        "http://internal.example/debian-security", "DEBIAN_SECURITY_MIRROR"
    )


def test_debian_mirror_needs_no_host_sources(tmp_path: Path) -> None:
    found = resolve(tmp_path, {}, {"DEBIAN_MIRROR": "http://m.example/debian"}, release="ID=arch\n")
    assert found.debian.value == "http://m.example/debian"


@pytest.mark.parametrize(
    "name, value",
    [
        ("DEBIAN_MIRROR", "deb.example/debian"),
        ("DEBIAN_MIRROR", "ftp://m.example/debian"),
        ("DEBIAN_MIRROR", "http://m.example/debian trixie main"),
        ("DEBIAN_SECURITY_MIRROR", "m.example"),
        ("APT_PROXY", "proxy.example:3142"),
    ],
)
def test_a_variable_that_is_not_a_url_is_named(tmp_path: Path, name: str, value: str) -> None:
    env = {"DEBIAN_MIRROR": "http://m.example/debian", name: value}
    with pytest.raises(mirrors.MirrorError) as info:
        resolve(tmp_path, {}, env)
    assert str(info.value).startswith(f"{name}={value!r} is not a URL: expected http://")


def test_no_mirror_found_says_where_it_looked_and_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(mirrors.MirrorError) as info:
        resolve(tmp_path, {"sources.list.d/vendor.sources": THIRD_PARTY})
    message = str(info.value)
    assert "no Debian mirror found in the host's apt sources" in message
    assert str(tmp_path / "apt/sources.list.d") in message
    assert "suite bookworm" in message
    assert "set DEBIAN_MIRROR=http://<mirror>/debian" in message


def test_a_host_that_is_not_debian_must_name_its_mirror(tmp_path: Path) -> None:
    ubuntu = "ID=ubuntu\nID_LIKE=debian\nVERSION_CODENAME=noble\n"
    files = {"sources.list": "deb http://archive.example/ubuntu noble main\n"}
    with pytest.raises(
        mirrors.MirrorError, match=r"this host runs ubuntu, not Debian.*DEBIAN_MIRROR"
    ):
        resolve(tmp_path, files, release=ubuntu)


def test_apt_proxy_is_used_for_both_schemes(tmp_path: Path) -> None:
    env = {
        "DEBIAN_MIRROR": "http://m.example/debian",
        "APT_PROXY": "http://user:secret@proxy.example:3142",
        "http_proxy": "http://ignored.example:3128",
        "no_proxy": "localhost,127.0.0.1",
    }
    found = resolve(tmp_path, {}, env, host_proxies={"http": "http://host-apt.example:3142"})
    assert found.proxy_env() == {
        "http_proxy": "http://user:secret@proxy.example:3142",
        "https_proxy": "http://user:secret@proxy.example:3142",
        "no_proxy": "localhost,127.0.0.1",
    }
    assert found.build_args()["http_proxy"] == "http://user:secret@proxy.example:3142"
    # Messages never show the password.
    assert "secret" not in found.describe() + found.advice()
    assert "http://user:***@proxy.example:3142 (from APT_PROXY)" in found.describe()


def test_the_usual_proxy_variables_then_the_hosts_apt_proxy(tmp_path: Path) -> None:
    base = {"DEBIAN_MIRROR": "http://m.example/debian"}
    found = resolve(tmp_path, {}, {**base, "HTTPS_PROXY": "http://p.example:3128"})
    assert found.proxy_env() == {"https_proxy": "http://p.example:3128"}
    assert found.https_proxy == mirrors.Origin("http://p.example:3128", "HTTPS_PROXY")

    found = resolve(tmp_path, {}, base, host_proxies={"http": "http://apt-cache.example:3142"})
    assert found.proxy_env() == {"http_proxy": "http://apt-cache.example:3142"}
    assert "(from the host's apt configuration)" in found.describe()

    assert resolve(tmp_path, {}, base).proxy_env() == {}


def test_advice_names_the_mirror_in_use_and_the_variables(tmp_path: Path) -> None:
    advice = resolve(tmp_path, {"sources.list.d/debian.sources": DEB822}).advice()
    assert "http://mirror.example/debian (from " in advice
    assert "DEBIAN_MIRROR=" in advice and "APT_PROXY=" in advice


def test_the_command_line_for_shell_scripts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEBIAN_MIRROR", "http://m.example/debian")
    monkeypatch.setenv("APT_PROXY", "http://proxy.example:3142")
    assert mirrors.main(["debian"]) == 0
    assert capsys.readouterr().out == "http://m.example/debian\n"
    assert mirrors.main(["apt-options"]) == 0
    assert capsys.readouterr().out.split() == [
        "-oAcquire::http::Proxy=http://proxy.example:3142",
        "-oAcquire::https::Proxy=http://proxy.example:3142",
    ]
    monkeypatch.setenv("DEBIAN_MIRROR", "nonsense")
    assert mirrors.main(["debian"]) == 2
    assert capsys.readouterr().err.startswith("error: DEBIAN_MIRROR='nonsense' is not a URL")
