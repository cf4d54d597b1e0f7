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
The machine has a software TPM (one state for its life): the first boot's systemd-repart creates swap, /var and
/var/tmp sealed to it, and from the second boot on /var is that encrypted partition, whichever release runs. The
self-test keeps /var's boot history (one line per boot, even a failing one: ``mangos-var-history: boot N ...`` on the
console; ``var-first`` and ``var-boots`` on its line): it proves that /var, written first under release 1, survives
the update to 2, unlocks under 3 (another UKI, another slot) and is still there, with every boot, after the rollback.
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
from tests.lib.releases import BROKEN_MARKER, VAR_HISTORY, Machine, ReleaseSet, selftest_fields

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


def _history(text: str) -> list[tuple[int, str, str]]:
    """The boots this console shows recorded in /var's history: (its number there, version, slot)."""
    return [(int(n), version, slot) for n, version, slot in VAR_HISTORY.findall(text)]


def _var(fields: dict[str, str]) -> tuple[str, str, str]:
    return fields["var"], fields.get("var-first", "-"), fields.get("var-boots", "-")


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
        # first boot with the TPM: repart creates the sealed partitions; /var is mounted from the next boot on
        assert (fields["tpm"], fields["parts"], _var(fields)) == ("yes", "swap,var,var-tmp", ("root", "-", "-")), fields
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
    assert _history(text) == []  # the root's read-only /var keeps nothing
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
        assert _var(fields) == ("luks", "1", "1"), fields  # the TPM unlocked /var: release 1 is its first boot
        run.wait_for(_updated("1", "2"), UPDATE)
        text = run.wait_exit(REBOOT)  # the updater rebooted the machine (credential mangos.esp-update-reboot)
    finally:
        run.stop()
    record_property("update_boot_seconds", run.seconds)
    assert "SHA256SUMS signature verified" in text and "sha256 verified" in text, text[-3000:]
    assert _history(text) == [(1, "1", "A")], text[-3000:]
    assert list(machine.slots().values()) == ["root-1", "verity-1", "verity-sig-1", "root-2", "verity-2",
                                              "verity-sig-2"]  # fmt: skip
    assert machine.entries() == ["mangos_1.efi", "mangos_2+3.efi"]  # 1 blessed; 2 with three tries
    machine.server.serve(release_set.channels["3"])  # what this machine finds next (the rollback test)
    run = machine.boot("release-2")  # left running: the rollback test goes on with it
    fields = selftest_fields(run.wait_for(OK, BOOT).group(0))
    assert (fields["version"], fields["slot"], fields["verity-sig"]) == ("2", "B", "kernel"), fields
    # /var unlocked under 2's UKI (sealed to PCR 7, not to the UKI), with what 1 wrote on it
    assert _var(fields) == ("luks", "1", "2"), fields
    assert fields["machine-id"] == selftest_fields(machine.boots[0].wait_for(OK, 0).group(0))["machine-id"]
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
        assert _history(text) == [(2 + attempt, "3", "A")], text[-3000:]  # 3's UKI unlocked /var too
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
    # the same /var, every boot on it: 1, 2, the three failed ones of 3, and this one
    assert _var(fields) == ("luks", "1", "6"), fields
    history = [h for b in machine.boots for h in _history(b.text())]
    assert history == [(1, "1", "A"), (2, "2", "B"), (3, "3", "A"), (4, "3", "A"), (5, "3", "A"), (6, "2", "B")]
    assert machine.entries() == ["mangos_2.efi", "mangos_3+0-3.efi"]  # 3 has no tries left
    # release 3's first boot started to the fallback's self-test line (seen within wait_for's 0.5 s poll)
    record_property("rollback_seconds", round(run.seen[OK.pattern] - machine.boots[-4].start, 1))
