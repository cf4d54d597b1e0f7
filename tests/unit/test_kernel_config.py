"""The kernel configuration: the checker (farm.build.kconfig) that fails the kernel build when an option of the
fragment did not stick, and the repository's fragment itself (every option with its reason, the options MANGOS
relies on present). No kernel is compiled here."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from farm.build import kconfig
from farm.build.kconfig import Entry, Mismatch, mismatches, parse_config, parse_fragment, parse_line

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
FRAGMENT = REPO / "recipes" / "kernel" / "mangos.config"

# What the rest of MANGOS relies on, with the value the fragment must ask for.
REQUIRED = {
    # The kernel checks the root's (and every extension's) signature against its built-in keyring.
    "CONFIG_DM_VERITY": "y",
    "CONFIG_DM_VERITY_VERIFY_ROOTHASH_SIG": "y",
    "CONFIG_SYSTEM_TRUSTED_KEYRING": "y",
    "CONFIG_SYSTEM_EXTRA_CERTIFICATE": "y",
    "CONFIG_SYSTEM_TRUSTED_KEYS": '""',
    "CONFIG_SECONDARY_TRUSTED_KEYRING": "n",
    # Everything built in; lockdown in integrity mode.
    "CONFIG_MODULES": "n",
    "CONFIG_SECURITY_LOCKDOWN_LSM": "y",
    "CONFIG_SECURITY_LOCKDOWN_LSM_EARLY": "y",
    "CONFIG_LOCK_DOWN_KERNEL_FORCE_INTEGRITY": "y",
    # Reproducible: no BTF, no random struct layout.
    "CONFIG_DEBUG_INFO_BTF": "n",
    "CONFIG_RANDSTRUCT_NONE": "y",
    # Boot: the EFI stub in a UKI started by systemd-stub; the root is erofs; sysext/confext need loop + overlayfs.
    "CONFIG_EFI_STUB": "y",
    "CONFIG_EFI_HANDOVER_PROTOCOL": "y",
    "CONFIG_EROFS_FS": "y",
    "CONFIG_BLK_DEV_LOOP": "y",
    "CONFIG_OVERLAY_FS": "y",
    "CONFIG_EFIVAR_FS": "y",
    "CONFIG_DM_CRYPT": "y",
    # QEMU.
    "CONFIG_VIRTIO_PCI": "y",
    "CONFIG_VIRTIO_BLK": "y",
    "CONFIG_VIRTIO_NET": "y",
    "CONFIG_VIRTIO_CONSOLE": "y",
    "CONFIG_HW_RANDOM_VIRTIO": "y",
    "CONFIG_SATA_AHCI": "y",
    "CONFIG_SERIAL_8250_CONSOLE": "y",
    # A USB install on real hardware.
    "CONFIG_BLK_DEV_NVME": "y",
    "CONFIG_USB_XHCI_PCI": "y",
    "CONFIG_USB_STORAGE": "y",
    "CONFIG_E1000E": "y",
    "CONFIG_IGB": "y",
    "CONFIG_R8169": "y",
    "CONFIG_TCG_TIS": "y",
    "CONFIG_TCG_CRB": "y",
    "CONFIG_FB_EFI": "y",
}


def test_option_lines_parse_set_and_unset_and_nothing_else() -> None:
    assert parse_line("CONFIG_A=y") == ("CONFIG_A", "y")
    assert parse_line('CONFIG_LSM="lockdown,yama"') == ("CONFIG_LSM", '"lockdown,yama"')
    assert parse_line("  # CONFIG_MODULES is not set  ") == ("CONFIG_MODULES", "n")
    assert parse_line("# CONFIG_MODULES is off") is None
    assert parse_line("# a comment") is None
    assert parse_line("") is None


def test_a_resolved_config_maps_every_option() -> None:
    text = '#\n# Automatically generated\n#\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_N=4096\nCONFIG_S="x"\n'
    assert parse_config(text) == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_N": "4096", "CONFIG_S": '"x"'}


def test_every_paragraph_needs_its_reason() -> None:
    entries, problems = parse_fragment("# why A\nCONFIG_A=y\n\nCONFIG_B=y\n\n# why C and D\nCONFIG_C=y\nCONFIG_D=m\n")
    assert [(e.name, e.reason) for e in entries] == [
        ("CONFIG_A", "why A"),
        ("CONFIG_B", ""),
        ("CONFIG_C", "why C and D"),
        ("CONFIG_D", "why C and D"),
    ]
    assert problems == ["line 4: CONFIG_B has no reason (open its paragraph with a comment saying why)"]


def test_malformed_duplicate_and_stray_lines_are_problems() -> None:
    _, problems = parse_fragment("# r\nCONFIG_A=maybe\nCONFIG_B=n\nCONFIG_A=y\nnonsense\n")
    assert problems == [
        "line 2: CONFIG_A has a malformed value 'maybe'",
        "line 3: write '# CONFIG_B is not set' rather than CONFIG_B=n",
        "line 4: CONFIG_A is already set on line 2",
        "line 5: neither a comment nor an option: nonsense",
    ]


def test_an_option_that_did_not_stick_is_a_mismatch_and_an_absent_one_is_off() -> None:
    wanted = [Entry("CONFIG_A", "y", 1, "r"), Entry("CONFIG_B", "n", 2, "r"), Entry("CONFIG_C", "y", 3, "r")]
    wanted += [Entry("CONFIG_S", "4096", 4, "r"), Entry("CONFIG_D", "n", 5, "r")]
    config = {"CONFIG_A": "y", "CONFIG_C": "m", "CONFIG_S": "2048", "CONFIG_D": "y"}
    assert mismatches(wanted, config) == [
        Mismatch("CONFIG_C", "y", "m"),
        Mismatch("CONFIG_S", "4096", "2048"),
        Mismatch("CONFIG_D", "n", "y"),
    ]
    assert mismatches({"CONFIG_E": "y"}, config) == [Mismatch("CONFIG_E", "y", "n")]
    assert "not set: a dependency is missing" in Mismatch("CONFIG_E", "y", "n").describe()
    assert "has CONFIG_C=m" in Mismatch("CONFIG_C", "y", "m").describe()


def test_check_exits_1_naming_every_option_that_did_not_stick(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fragment, config = tmp_path / "frag.config", tmp_path / ".config"
    fragment.write_text("# needed\nCONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\n")
    config.write_text("CONFIG_A=y\n# CONFIG_B is not set\n")
    assert kconfig.main(["check", str(fragment), str(config)]) == 1
    err = capsys.readouterr().err
    assert "CONFIG_B=y did not stick" in err and "CONFIG_A" not in err and "1 option(s)" in err
    config.write_text("CONFIG_A=y\nCONFIG_B=y\n")
    assert kconfig.main(["check", str(fragment), str(config)]) == 0
    assert "all 3 options hold" in capsys.readouterr().err
    assert kconfig.main(["check", str(fragment)]) == 2


def test_the_checker_imports_only_the_standard_library() -> None:
    """The kernel recipe runs farm/build/kconfig.py in its sandbox, where the farm is not installed."""
    tree = ast.parse(Path(kconfig.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported


def test_the_repository_fragment_is_well_formed_and_every_option_has_its_reason() -> None:
    entries, problems = parse_fragment(FRAGMENT.read_text())
    assert problems == []
    assert all(e.reason for e in entries)
    assert len(entries) > 100


def test_the_repository_fragment_asks_for_what_mangos_relies_on() -> None:
    entries, _ = parse_fragment(FRAGMENT.read_text())
    asked = {e.name: e.value for e in entries}
    assert {name: asked.get(name) for name in REQUIRED} == REQUIRED
    assert asked["CONFIG_LSM"].strip('"').split(",")[0] == "lockdown"
    assert int(asked["CONFIG_SYSTEM_EXTRA_CERTIFICATE_SIZE"]) >= 4096  # an X.509 certificate with an RSA-4096 key
