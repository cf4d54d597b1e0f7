"""A/B updates and rollback of one real machine in QEMU (issue #15): OVMF with Secure Boot on our keys, TCG, the
farm's kernel, the channel served over HTTP from a loopback port of this machine through a guest forward.

The machine is installed with release 1 (:mod:`tests.lib.releases`: releases 1, 2, 3 of one image, published into
channels) and its disk and firmware variables persist across the tests, which are its life in order; the image's own
``mangos-update.timer`` runs the updater each boot, with the channel URL (and "reboot after an update") as systemd
credentials from the ESP:
1. ``test_update_refuses_a_release_signed_by_another_key``: release 2's ``SHA256SUMS`` signed by a key pair the
   machine never trusted: the updater exits 5 and says why, slot B and the ESP are untouched, nothing of 2 but its
   signed index is even fetched;
2. ``test_update_writes_slot_b_and_boots_release_2``: the machine still boots 1 from slot A, the updater writes 2 into
   slot B and reboots; 2 boots (self-test: ``version=2 slot=B``) and is blessed (``mangos_2+2-1.efi`` ->
   ``mangos_2.efi``: the image's mangos-bless-boot, since Debian's systemd-bless-boot is in the systemd-boot package);
3. ``test_rollback_to_release_2_after_three_failed_boots_of_release_3``: running 2, the updater writes 3 into slot A
   (the one not running, which held 1); 3 fails its self-test each boot and reboots (its entry goes ``+2-1``,
   ``+1-2``, ``+0-3``); the fourth boot is 2 from slot B again, by itself.
Each boot is one QEMU run (``-no-reboot``: the guest's reboot ends it; a boot the test is done with is stopped: the
guest has no ACPI power-button handler without logind); its serial log is kept in the machine's work directory.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

import pytest

from farm.image import gpt
from farm.image.payload import SELFTEST_OK
from tests.lib import releases
from tests.lib.kernel import KERNEL_BUILD_TIMEOUT
from tests.lib.releases import BROKEN_MARKER, Machine, ReleaseSet, selftest_fields

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(KERNEL_BUILD_TIMEOUT + 1800)]

BOOT = 420.0  # QEMU start to the self-test line, under TCG (about 60 s on an idle 2-core machine)
UPDATE = 420.0  # the self-test to the updater's last line (it streams release 2's root into slot B)
REBOOT = 180.0  # the updater's last line (or a failed self-test) to the guest's reboot
OK = re.compile(re.escape(SELFTEST_OK) + r"[^\r\n]*")
EXIT = re.compile(r"mangos-update: exit (\d+)")
BLESSED = re.compile(r"mangos-bless-boot: (\S+) -> (\S+) \(this boot is good\)")
BROKEN = re.compile(re.escape(BROKEN_MARKER))

Record = Callable[[str, object], None]

release_set = releases.release_set  # the session's release set (shared with other QEMU tests that import it)
machine = releases.machine


def _updated(old: str, new: str) -> re.Pattern[str]:
    return re.compile(rf"mangos-update: updated: {old} -> {new} [^\r\n]*")


def _inactive_digest(m: Machine) -> str:
    """sha256 over slot B's three partitions (the ones not running 1)."""
    table = gpt.read_table(m.disk)
    h = hashlib.sha256()
    for entry in table[4:7]:
        h.update(entry.name.encode() + entry.uuid.encode() + gpt.read_partition(m.disk, entry))
    return h.hexdigest()


def test_update_refuses_a_release_signed_by_another_key(
    machine: Machine, release_set: ReleaseSet, record_property: Record
) -> None:
    record_property("release_set_seconds", release_set.seconds)
    slots, slot_b = machine.slots(), _inactive_digest(machine)
    assert list(slots.values())[3:] == [gpt.EMPTY_LABEL] * 3, slots
    machine.server.serve(release_set.channels["foreign"])
    run = machine.boot("foreign-2")
    try:
        fields = selftest_fields(run.wait_for(OK, BOOT).group(0))
        assert (fields["version"], fields["slot"], fields["verity-sig"]) == ("1", "A", "kernel"), fields
        blessed = run.wait_for(BLESSED, BOOT).groups()  # first boot: counted, and blessed after the self-test
        code = run.wait_for(EXIT, BOOT).group(1)
    finally:
        run.stop()
    record_property("boot_seconds", run.seconds)
    text = run.text()
    assert blessed == ("mangos_1+2-1.efi", "mangos_1.efi"), blessed
    assert code == "5", text[-3000:]
    assert "release 2: SHA256SUMS is not signed by a key this machine trusts" in text, text[-3000:]
    assert "nothing was written" in text
    fetched = " ".join(machine.server.requests)
    assert "/2/SHA256SUMS.p7s" in fetched and "mangos_2." not in fetched, fetched
    assert machine.slots() == slots  # no label changed
    assert _inactive_digest(machine) == slot_b  # not a byte of slot B
    assert machine.entries() == ["mangos_1.efi"]  # blessed, and nothing of 2


def test_update_writes_slot_b_and_boots_release_2(
    machine: Machine, release_set: ReleaseSet, record_property: Record
) -> None:
    machine.server.serve(release_set.channels["2"])
    run = machine.boot("update-to-2")
    try:
        fields = selftest_fields(run.wait_for(OK, BOOT).group(0))
        assert (fields["version"], fields["slot"]) == ("1", "A"), fields  # 1 still boots (after the refusal too)
        run.wait_for(_updated("1", "2"), UPDATE)
        text = run.wait_exit(REBOOT)  # the updater rebooted the machine (credential mangos.esp-update-reboot)
    finally:
        run.stop()
    record_property("update_boot_seconds", run.seconds)
    assert "SHA256SUMS signature verified" in text and "sha256 verified" in text, text[-3000:]
    assert list(machine.slots().values()) == ["root-1", "verity-1", "verity-sig-1", "root-2", "verity-2",
                                              "verity-sig-2"]  # fmt: skip
    assert machine.entries() == ["mangos_1.efi", "mangos_2+3.efi"]  # 1 blessed; 2 with three tries
    machine.server.serve(release_set.channels["3"])  # what this machine finds next (the rollback test)
    run = machine.boot("release-2")  # left running: the rollback test goes on with it
    fields = selftest_fields(run.wait_for(OK, BOOT).group(0))
    assert (fields["version"], fields["slot"], fields["verity-sig"]) == ("2", "B", "kernel"), fields
    assert run.wait_for(BLESSED, BOOT).groups() == ("mangos_2+2-1.efi", "mangos_2.efi")  # the first try was good
    record_property("release_2_boot_seconds", run.seconds)


def test_rollback_to_release_2_after_three_failed_boots_of_release_3(
    machine: Machine, release_set: ReleaseSet, record_property: Record
) -> None:
    if not machine.boots or machine.boots[-1].proc.poll() is not None:
        pytest.fail("this test continues the machine test_update_writes_slot_b_and_boots_release_2 left running")
    run = machine.boots[-1]
    try:
        run.wait_for(_updated("2", "3"), UPDATE)
        run.wait_exit(REBOOT)
    finally:
        run.stop()
    slots = list(machine.slots().values())
    assert slots == ["root-3", "verity-3", "verity-sig-3", "root-2", "verity-2", "verity-sig-2"], slots
    assert machine.entries() == ["mangos_2.efi", "mangos_3+3.efi"]  # 1's entry went with its slot
    counted = []
    for attempt in range(1, 4):
        run = machine.boot(f"release-3-try-{attempt}")
        try:
            run.wait_for(BROKEN, BOOT)  # release 3's root is running, and its self-test fails
            text = run.wait_exit(REBOOT)  # FailureAction=reboot
        finally:
            run.stop()
        assert SELFTEST_OK not in text and "mangos-bless-boot:" not in text, text[-3000:]  # never blessed
        counted.append(machine.entries())
    assert counted == [
        ["mangos_2.efi", "mangos_3+2-1.efi"],
        ["mangos_2.efi", "mangos_3+1-2.efi"],
        ["mangos_2.efi", "mangos_3+0-3.efi"],
    ]
    run = machine.boot("fallback-to-2")
    try:
        fields = selftest_fields(run.wait_for(OK, BOOT).group(0))
    finally:
        run.stop()
    assert (fields["version"], fields["slot"], fields["verity-sig"]) == ("2", "B", "kernel"), fields
    assert BROKEN_MARKER not in run.text()
    assert machine.entries() == ["mangos_2.efi", "mangos_3+0-3.efi"]  # 3 has no tries left
    record_property("rollback_seconds", sum(b.seconds for b in machine.boots[-5:]))
