"""The installer's network and TLS settings (:mod:`farm.image.installer_net`): ``install-network`` parsed into a
systemd-networkd file and applied on a fake machine (networkd's link state, the commands it runs), the text UI's
network screen (scripted, and on a real pty from the copy the image carries), and an ``https://`` channel checked
against ``install-ca`` (a throwaway CA made with the openssl CLI, a server on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.errors import E, FarmError
from farm.image import installer, installer_guest, installer_net
from farm.image.installer_guest import Disk
from tests.lib.installer_copy import drive, fake_host, guest_copy, publish_small, run_guest


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A channel (a directory) with release 1.0 of a small image."""
    return publish_small(tmp_path_factory.mktemp("installer-net"))


def test_the_network_screen_comes_before_the_disks_and_applies_static_settings(
    monkeypatch: pytest.MonkeyPatch, published: Path, tmp_path: Path
) -> None:
    """Interactive: the interfaces with their addresses, a bad answer asked again, the static settings applied
    (the .network file, networkd restarted, its state of the link), then the disk list."""
    monkeypatch.setattr(installer_guest, "list_disks", lambda: [Disk("vda", 10**10, "virtio disk")])
    monkeypatch.setattr(installer_guest, "boot_disk", lambda cmdline: "vda")
    prompts: list[str] = []
    answers = iter(["address=10.0.2.15", "address=10.0.2.15/24 gateway=10.0.2.2 dns=10.0.2.3", "vda"])

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        return next(answers)

    out, host = io.StringIO(), fake_host(tmp_path)
    cert = published.parent / "keys" / "verity.crt"
    code = installer_guest.main(["--channel", str(published), "--cert", str(cert)], out=out, ask=ask, environ={},
                                host=host)  # fmt: skip
    text = out.getvalue()
    assert code == 1, text  # vda is refused: the installer booted from it
    screen = text.index("network interfaces:")
    assert screen < text.index("block devices:")
    assert "ens3           52:54:00:12:34:56  up       10.0.2.15/24" in text
    assert "error[E-SETTINGS]: install-network: address: '10.0.2.15' needs its prefix length" in text
    assert prompts[0] == prompts[1] and "press Enter to keep DHCP" in prompts[0]
    network = tmp_path / "network" / installer_net.NETWORK_FILE
    applied = (f"network: static address=10.0.2.15/24 gateway=10.0.2.2 dns=10.0.2.3 applied on ens3 (networkd: "
               f"{network} configured, routable; address now 10.0.2.15/24)")  # fmt: skip
    assert applied in text and text.index(applied) < text.index("block devices:")
    assert "Name=ens3" in network.read_text() and "Gateway=10.0.2.2" in network.read_text()
    assert (tmp_path / "run" / "resolv.conf").read_text() == "nameserver 10.0.2.3\n"
    assert host.execute.ran == [  # type: ignore[attr-defined]
        ["systemctl", "restart", "systemd-networkd.service"],
        ["mount", "--bind", str(tmp_path / "run" / "resolv.conf"), str(tmp_path / "resolv.conf")],
    ]


def test_install_network_is_dhcp_or_static_settings_and_bad_ones_name_the_field() -> None:
    parse = installer_net.parse_network
    assert parse("") is None and parse(" DHCP\n") is None
    assert parse("address=10.0.2.15/24 gateway=10.0.2.2 dns=10.0.2.3,1.1.1.1 dns=9.9.9.9 interface=ens3") == (
        installer_net.Static("10.0.2.15/24", "10.0.2.2", ("10.0.2.3", "1.1.1.1", "9.9.9.9"), "ens3")
    )
    assert parse("address=fd00::5/64") == installer_net.Static("fd00::5/64")
    for text, field, why in (
        ("static", "static", "not KEY=VALUE"),
        ("address=10.0.2.15/24 mask=24", "mask=24", "not KEY=VALUE"),
        ("gateway=10.0.2.2", "address", "missing"),
        ("address=10.0.2.15", "address", "needs its prefix length"),
        ("address=10.0.2.300/24", "address", "not an IP address"),
        ("address=10.0.2.15/24 address=10.0.2.16/24", "address", "given twice"),
        ("address=10.0.2.15/24 gateway=10.0.3.1", "gateway", "not another address of 10.0.2.0/24"),
        ("address=10.0.2.15/24 dns=resolver.example", "dns", "not an IP address"),
        ("address=10.0.2.15/24 interface=a/b", "interface", "not an interface name"),
    ):
        with pytest.raises(FarmError, match=why) as err:
            parse(text)
        assert (err.value.code, err.value.field) == (E.SETTINGS, f"install-network:{field}"), text
        assert err.value.message.startswith(f"install-network: {field}: ") and "address=10.0.2.15/24" in err.value.hint


def test_network_text_gives_one_interface_the_static_settings() -> None:
    static = installer_net.Static("10.0.2.15/24", "10.0.2.2", ("10.0.2.3", "10.0.2.4"))
    text = installer_net.network_text(static, "enp0s3")
    assert "[Match]\nName=enp0s3\n\n[Network]\nDHCP=no\n" in text
    assert "\nAddress=10.0.2.15/24\nGateway=10.0.2.2\nDNS=10.0.2.3\nDNS=10.0.2.4\n" in text
    assert "Gateway" not in installer_net.network_text(installer_net.Static("10.0.2.15/24"), "enp0s3")
    assert installer_net.NETWORK_FILE < "80-mangos-dhcp.network"  # networkd takes the first match by name
    assert installer_net.networkd_argv() == ["systemctl", "restart", "systemd-networkd.service"]  # no D-Bus needed


def test_static_settings_need_an_interface_networkd_then_configures(tmp_path: Path) -> None:
    static = installer_net.parse_network("address=10.0.2.15/24")
    host = fake_host(tmp_path / "two", nics=("ens3", "ens4"))
    with pytest.raises(FarmError, match=r"2 wired interfaces \(ens3, ens4\): name one"):
        installer_net.apply(static, host)
    with pytest.raises(FarmError, match="no interface 'eth9'"):
        installer_net.apply(installer_net.parse_network("address=10.0.2.15/24 interface=eth9"), host)
    assert installer_net.wired(host.sys_net) == ["ens3", "ens4"]  # not lo, not the bridge
    host = fake_host(tmp_path / "stuck", stuck=True)  # networkd keeps the DHCP file
    with pytest.raises(FarmError, match="networkd did not configure ens3") as err:
        installer_net.apply(static, host)
    assert err.value.code == E.SETTINGS and "journalctl -u systemd-networkd" in err.value.hint
    host = fake_host(tmp_path / "ok")
    line = installer_net.apply(static, host)
    assert line.startswith("network: static address=10.0.2.15/24 applied on ens3 ("), line
    assert not (tmp_path / "ok" / "run").exists()  # no dns=: resolv.conf untouched


def test_network_and_ca_settings_come_from_credentials_or_the_esp(tmp_path: Path) -> None:
    creds, esp = tmp_path / "creds", tmp_path / "esp"
    creds.mkdir()
    esp.mkdir()
    (esp / "install-network").write_text("address=10.0.2.15/24 gateway=10.0.2.2\n")
    (esp / "install-ca").write_text("-----BEGIN CERTIFICATE-----\nMII...\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    args = installer_guest.parser().parse_args(["--from-service"])
    assert installer_guest.setting(args, env, "install-network", esp) == "address=10.0.2.15/24 gateway=10.0.2.2"
    assert installer_guest.given_path(args, env, "install-ca", esp) == esp / "install-ca"  # the file: a whole PEM
    (creds / "mangos.install-ca").write_text("")  # empty: as none
    assert installer_guest.given_path(args, env, "install-ca", esp) == esp / "install-ca"
    (creds / "mangos.install-network").write_text("dhcp\n")
    assert installer_guest.setting(args, env, "install-network", esp) == "dhcp"
    plain = installer_guest.parser().parse_args([])
    assert installer_guest.setting(plain, env, "install-network", esp) == ""  # only for the service
    assert installer_guest.given_path(plain, env, "install-ca", esp) is None


def test_a_file_target_leaves_the_network_alone(monkeypatch: pytest.MonkeyPatch, published: Path,
                                               tmp_path: Path) -> None:  # fmt: skip
    """A disk image written on a host (a target outside /dev, no --network) touches no network settings."""
    out, host = io.StringIO(), fake_host(tmp_path / "host")
    cert = published.parent / "keys" / "verity.crt"
    target = tmp_path / "disk.raw"
    code = installer_guest.main(["--channel", str(published), "--cert", str(cert), "--target", str(target)],
                                out=out, environ={}, host=host)  # fmt: skip
    assert code == 0, out.getvalue()
    assert "network:" not in out.getvalue() and host.execute.ran == []  # type: ignore[attr-defined]


def test_the_in_image_copy_shows_the_network_screen_on_a_terminal(published: Path, tmp_path: Path) -> None:
    """The copied installer in an isolated interpreter on a pty: the network screen (a bad answer asked again, Enter
    keeps DHCP), then the disks; a disk that is not there ends it before anything is written."""
    script = guest_copy(tmp_path / "root")
    cert = published.parent / "keys" / "verity.crt"
    argv = [sys.executable, "-I", "-S", "-B", str(script), "--channel", str(published), "--cert", str(cert)]
    code, text = drive(argv, [("press Enter to keep DHCP", "gateway=10.0.2.2"), ("press Enter to keep DHCP", ""),
                               ("install to which disk", "no-such-disk")])  # fmt: skip
    assert code == 1, text
    assert text.index("network interfaces:") < text.index("network: dhcp (the image's default)")
    assert "error[E-SETTINGS]: install-network: address: missing" in text
    assert text.index("network: dhcp") < text.index("block devices:") < text.index("install to which disk")
    assert "error[E-IMAGE-INPUT]: 'no-such-disk' is not a disk of this machine" in text, text
    assert "writing release" not in text


def _tls_files(tmp: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (openssl CLI): (ca.pem, cert, key)."""
    tmp.mkdir(parents=True, exist_ok=True)
    ca, ca_key, cert, key, csr = (tmp / n for n in ("ca.pem", "ca.key", "server.pem", "server.key", "server.csr"))
    ext = tmp / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    for argv in (
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=MANGOS test organization CA"],
        ["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key,
         "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", ext],
    ):  # fmt: skip
        subprocess.run([str(a) for a in argv], check=True, capture_output=True)
    return ca, cert, key


@pytest.fixture(scope="module")
def https_channel(published: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The published channel served over HTTPS on 127.0.0.1 with a throwaway CA's certificate: (URL, the CA)."""
    import http.server
    import ssl
    import threading
    from functools import partial

    ca, cert, key = _tls_files(tmp_path_factory.mktemp("tls"))
    handler = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(published)))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}", ca
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_an_https_channel_verifies_against_install_ca(https_channel: tuple[str, Path], published: Path,
                                                      tmp_path: Path) -> None:  # fmt: skip
    url, ca = https_channel
    script = guest_copy(tmp_path / "root")
    cert = published.parent / "keys" / "verity.crt"
    target = tmp_path / "disk.raw"
    done = run_guest(script, "--channel", url, "--target", str(target), "--cert", str(cert), "--ca", str(ca))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"release 1.0 of {url}: SHA256SUMS signature verified" in done.stdout
    raw = published.parent / "out" / "mangos_1.0.raw"
    assert hashlib.sha256(target.read_bytes()).hexdigest() == hashlib.sha256(raw.read_bytes()).hexdigest()


def test_an_https_channel_of_an_unknown_ca_is_refused_before_anything_is_written(
    https_channel: tuple[str, Path], published: Path, tmp_path: Path
) -> None:
    url, _ = https_channel
    script = guest_copy(tmp_path / "root")
    cert = published.parent / "keys" / "verity.crt"
    target = tmp_path / "disk.raw"
    done = run_guest(script, "--channel", url, "--target", str(target), "--cert", str(cert))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"error[E-CHANNEL-UNTRUSTED]: {url}: the server's TLS certificate does not verify (" in done.stdout
    assert "give its CA (PEM) as the setting install-ca" in done.stdout and "nothing was written" in done.stdout
    assert not target.exists()
    other = _tls_files(tmp_path / "other")[0]  # a CA, but not the server's
    done = run_guest(script, "--channel", url, "--target", str(target), "--cert", str(cert), "--ca", str(other))
    assert "error[E-CHANNEL-UNTRUSTED]" in done.stdout and not target.exists(), done.stdout
    (tmp_path / "not.pem").write_text("not a certificate\n")
    done = run_guest(script, "--channel", url, "--target", str(target), "--cert", str(cert), "--ca",
                      str(tmp_path / "not.pem"))  # fmt: skip
    assert "error[E-SETTINGS]: install-ca: " in done.stdout and not target.exists(), done.stdout


def test_the_installer_image_carries_ca_certificates_and_the_network_module() -> None:
    assert "ca-certificates" in installer.PACKAGES
    assert "farm/image/installer_net.py" in installer.VENDORED


def test_addresses_come_from_the_kernel_without_iproute2() -> None:
    """The installer image has no ``ip``: an interface's IPv4 address and prefix come from two ioctls."""
    assert installer_net.ipv4("lo") == "127.0.0.1/8"
    assert installer_net.ipv4("no-such-if0") == ""
