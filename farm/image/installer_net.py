"""The installer's network and TLS settings (:mod:`farm.image.installer_guest`; vendored into the installer image).

``install-network`` is ``dhcp`` (the image's default: ``80-mangos-dhcp.network`` of the root payload) or static
settings ``address=10.0.2.15/24 gateway=10.0.2.2 dns=10.0.2.3 [interface=NAME]``. Static settings become a
systemd-networkd ``.network`` file (:func:`network_text`) in ``/run/systemd/network`` whose name sorts before the
image's DHCP file, so networkd applies it to that interface instead. networkd is restarted to take it
(:func:`networkd_argv`: ``networkctl reload`` would need D-Bus, which the image does not have; systemctl talks to PID 1
over its private socket); the installer then waits until networkd's state of the link
(``/run/systemd/netif/links/IFINDEX``, what sd_network_link_get_network_file() reads) names that file and says
``configured``. The image's ``/etc/resolv.conf`` is an empty file on the read-only root (no systemd-resolved):
``dns=`` is written there by a bind mount of a file in /run (:func:`resolv_bind_argv`).

``install-ca`` (a PEM) is the organization's CA the installer trusts for an ``https://`` channel, besides the image's
ca-certificates (:func:`tls_context`); a channel whose TLS certificate does not verify is E-CHANNEL-UNTRUSTED.

The standard library only: addresses come from ``SIOCGIFADDR``/``SIOCGIFNETMASK`` ioctls and ``/sys/class/net``
(the installer image has no iproute2).
"""

from __future__ import annotations

import fcntl
import ipaddress
import re
import socket
import ssl
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from farm.errors import E, FarmError, TrustError
from farm.run import run

NETWORK, CA = "install-network", "install-ca"  # settings: credentials mangos.NAME or files /efi/mangos/NAME
EXAMPLE = "address=10.0.2.15/24 gateway=10.0.2.2 dns=10.0.2.3 [interface=NAME]"
NETWORK_FILE = "10-mangos-install.network"  # before the image's 80-mangos-dhcp.network
WAIT = 30.0  # seconds for networkd to configure the static settings
_IFNAME = re.compile(r"[A-Za-z0-9_.:-]{1,15}")
_KEYS = ("address", "gateway", "dns", "interface")
_SIOCGIFADDR, _SIOCGIFNETMASK = 0x8915, 0x891B


@dataclass(frozen=True)
class Static:
    address: str  # 10.0.2.15/24
    gateway: str = ""
    dns: tuple[str, ...] = ()
    interface: str = ""  # "": the machine's only wired interface

    def describe(self) -> str:
        parts = [f"address={self.address}"]
        parts += [f"gateway={self.gateway}"] if self.gateway else []
        parts += [f"dns={','.join(self.dns)}"] if self.dns else []
        return " ".join(parts + ([f"interface={self.interface}"] if self.interface else []))


def _bad(what: str, why: str) -> FarmError:
    return FarmError(E.SETTINGS, f"{NETWORK}: {what}: {why}", field=f"{NETWORK}:{what}",
                     hint=f"give 'dhcp' or static settings: {EXAMPLE}")  # fmt: skip


def parse_network(text: str) -> Static | None:
    """The setting ``install-network``: None for DHCP ("" or ``dhcp``), else the static settings it gives."""
    text = text.strip()
    if text.lower() in ("", "dhcp"):
        return None
    got: dict[str, list[str]] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if not sep or key not in _KEYS or not value:
            raise _bad(token, f"not KEY=VALUE with KEY one of {', '.join(_KEYS)}")
        if key != "dns" and key in got:
            raise _bad(key, "given twice")
        got.setdefault(key, []).extend(v for v in value.split(",") if v)
    if "address" not in got:
        raise _bad("address", "missing (static settings need address=IP/PREFIX)")
    address = got["address"][0]
    try:
        iface = ipaddress.ip_interface(address)
    except ValueError:
        raise _bad("address", f"{address!r} is not an IP address with a prefix length, e.g. 10.0.2.15/24") from None
    if "/" not in address or iface.network.prefixlen == iface.max_prefixlen:
        raise _bad("address", f"{address!r} needs its prefix length, e.g. {iface.ip}/24")
    gateway, name = got.get("gateway", [""])[0], got.get("interface", [""])[0]
    _check_rest(iface, gateway, got.get("dns", []), name)
    return Static(str(iface.with_prefixlen), gateway, tuple(got.get("dns", [])), name)


def _check_rest(
    iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface, gateway: str, dns: Sequence[str], name: str
) -> None:
    if gateway:
        try:
            gw = ipaddress.ip_address(gateway)
        except ValueError:
            raise _bad("gateway", f"{gateway!r} is not an IP address") from None
        if gw not in iface.network or gw == iface.ip:
            raise _bad("gateway", f"{gateway} is not another address of {iface.network}")
    for server in dns:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise _bad("dns", f"{server!r} is not an IP address (a name server is given by its address)") from None
    if name and not _IFNAME.fullmatch(name):
        raise _bad("interface", f"{name!r} is not an interface name")


def network_text(static: Static, interface: str) -> str:
    """The systemd-networkd ``.network`` file that gives ``interface`` the static settings."""
    lines = ["# mangos-install: the setting install-network (static; replaces DHCP on this interface)",
             "[Match]", f"Name={interface}", "", "[Network]", "DHCP=no", "LinkLocalAddressing=no",
             f"Address={static.address}"]  # fmt: skip
    lines += [f"Gateway={static.gateway}"] if static.gateway else []
    lines += [f"DNS={d}" for d in static.dns]
    return "\n".join(lines) + "\n"


def resolv_text(dns: Sequence[str]) -> str:
    return "".join(f"nameserver {d}\n" for d in dns)


def networkd_argv() -> list[str]:
    """What makes networkd take a new ``.network`` file for a link it has configured (by DHCP): a restart (it then
    matches every link again; ``networkctl reload``/``reconfigure`` ask over D-Bus, and the image has no D-Bus)."""
    return ["systemctl", "restart", "systemd-networkd.service"]


def resolv_bind_argv(source: Path, resolv: Path) -> list[str]:
    return ["mount", "--bind", str(source), str(resolv)]


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def wired(sys_net: Path) -> list[str]:
    """The machine's wired interfaces: Ethernet (type 1) devices with a device behind them (no bridges, veths)."""
    names = sorted(p.name for p in sys_net.iterdir()) if sys_net.is_dir() else []
    return [n for n in names if _read(sys_net / n / "type") == "1" and (sys_net / n / "device").exists()]


def ipv4(interface: str) -> str:
    """``interface``'s IPv4 address with its prefix ("" if it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        req = struct.pack("256s", interface.encode()[:15])
        try:
            addr = socket.inet_ntoa(fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, req)[20:24])
            mask = socket.inet_ntoa(fcntl.ioctl(sock.fileno(), _SIOCGIFNETMASK, req)[20:24])
        except OSError:
            return ""
    return str(ipaddress.ip_interface(f"{addr}/{mask}").with_prefixlen)


def link_state(links: Path, ifindex: str) -> dict[str, str]:
    """networkd's state of a link (KEY=VALUE lines)."""
    text = _read(links / ifindex) if ifindex else ""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


@dataclass(frozen=True)
class Host:
    """Where the settings go (injectable for tests) and how commands run."""

    network_dir: Path = Path("/run/systemd/network")
    links: Path = Path("/run/systemd/netif/links")
    sys_net: Path = Path("/sys/class/net")
    resolv: Path = Path("/etc/resolv.conf")
    run_dir: Path = Path("/run/mangos-install")
    execute: Callable[[list[str]], object] = field(default=lambda argv: run(argv, timeout=60))
    address: Callable[[str], str] = ipv4
    wait: float = WAIT

    def interfaces(self) -> list[tuple[str, str, str, str]]:
        """(name, MAC, state, IPv4 address) of each wired interface: the network screen."""
        return [(n, _read(self.sys_net / n / "address"), _read(self.sys_net / n / "operstate") or "-",
                 self.address(n) or "no IPv4 address") for n in wired(self.sys_net)]  # fmt: skip


def interface_for(static: Static, host: Host) -> str:
    names = wired(host.sys_net)
    if static.interface:
        if not (host.sys_net / static.interface).exists():
            raise _bad("interface", f"no interface {static.interface!r} (wired: {', '.join(names) or 'none'})")
        return static.interface
    if len(names) != 1:
        raise _bad("interface", f"{len(names)} wired interfaces ({', '.join(names) or 'none'}): name one")
    return names[0]


def apply(static: Static | None, host: Host) -> str:
    """The setting made so; the line that says which was applied (DHCP: nothing to do)."""
    if static is None:
        now = "; ".join(f"{n} {a}" for n, _, _, a in host.interfaces()) or "no wired interface"
        return f"network: dhcp (the image's default): {now}"
    interface = interface_for(static, host)
    host.network_dir.mkdir(parents=True, exist_ok=True)
    path = host.network_dir / NETWORK_FILE
    path.write_text(network_text(static, interface))
    host.execute(networkd_argv())
    ifindex = _read(host.sys_net / interface / "ifindex")
    deadline = time.monotonic() + host.wait
    while True:  # configured by this file, and routable (or configured when the time is up)
        state = link_state(host.links, ifindex)
        configured = state.get("NETWORK_FILE") == str(path) and state.get("ADMIN_STATE") == "configured"
        if configured and (state.get("OPER_STATE") == "routable" or time.monotonic() > deadline):
            break
        if time.monotonic() > deadline:
            raise FarmError(E.SETTINGS, f"{NETWORK}: networkd did not configure {interface} with {path} within "
                            f"{host.wait:g} s (state {state or 'unknown'})",
                            hint="check the settings; 'journalctl -u systemd-networkd' says why")  # fmt: skip
        time.sleep(0.2)
    if static.dns and host.resolv.exists() and not host.resolv.is_symlink():
        host.run_dir.mkdir(parents=True, exist_ok=True)
        (host.run_dir / "resolv.conf").write_text(resolv_text(static.dns))
        host.execute(resolv_bind_argv(host.run_dir / "resolv.conf", host.resolv))
    now = host.address(interface) or "-"
    return (f"network: static {static.describe()} applied on {interface} (networkd: {path} "
            f"{state.get('ADMIN_STATE')}, {state.get('OPER_STATE', '-')}; address now {now})")  # fmt: skip


def tls_context(ca: Path | None) -> ssl.SSLContext:
    """The system's CAs (the image's ca-certificates), plus ``ca`` (install-ca) when given."""
    ctx = ssl.create_default_context()
    if ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise FarmError(E.SETTINGS, f"{CA}: {ca} is not a PEM certificate: {exc}", field=CA,
                            hint="give the organization's CA certificate (PEM) as install-ca") from None  # fmt: skip
    return ctx


def use_tls(ctx: ssl.SSLContext) -> None:
    """Every https:// fetch of this process (urllib's default opener) verifies with ``ctx``."""
    urllib.request.install_opener(urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx)))


def check_tls(url: str, ctx: ssl.SSLContext, timeout: float = 30.0) -> None:
    """An https:// channel whose certificate does not verify is E-CHANNEL-UNTRUSTED (before anything is written);
    other failures are left to the fetch that follows."""
    if not url.startswith("https://"):
        return
    try:
        with urllib.request.urlopen(f"{url}/channel.json", timeout=timeout, context=ctx):  # noqa: S310 - https
            return
    except urllib.error.URLError as exc:
        reason = exc.reason
    except ssl.SSLError as exc:
        reason = exc
    except OSError:
        return
    if isinstance(reason, ssl.SSLCertVerificationError):
        raise TrustError(E.CHANNEL_UNTRUSTED, f"{url}: the server's TLS certificate does not verify "
                         f"({reason.verify_message or reason})",
                         hint=f"give its CA (PEM) as the setting {CA} (credential mangos.{CA} or "
                         f"/efi/mangos/{CA}, or --ca FILE); nothing was written")  # fmt: skip
