"""Commands that change a submitted run (cancel, retry), from any process, written by one.

Only the process that drives the state (the holder of the coordinator lease) writes the records of a run a
coordinator may be working on, so that a command never crosses a tick's writes (a cancel that read the counts,
then a tick that stored a build as built, then the cancel storing counts from before it). A command is therefore:

- done here when this process drives the state (between two of its ticks);
- done here, holding the lease for that moment, when no process drives it (a coordinator that starts meanwhile
  waits for the lease, then loads the state afresh);
- else sent to the driving coordinator through its inbox (``{"command": ..., "run": ..., "id": ...}``), which
  applies it in its next tick, once it has taken up (and stored) the outcomes that arrived with it, and answers under
  ``mangos:answer:<id>`` (``{"ok": true}`` or ``{"error": {...}}``, kept a minute); the sender waits for the
  answer, and does the command itself if the lease falls free meanwhile (applying one twice is harmless: a
  second cancel finds nothing in flight, a second retry finds the build no longer failed and is refused).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from farm.coordinator import layout
from farm.coordinator.leases import CoordinatorLease
from farm.coordinator.loading import Loading
from farm.coordinator.records import Job, Run
from farm.errors import E, FarmError

log = logging.getLogger(__name__)

ANSWER = "mangos:answer:"
ANSWER_TTL = 60.0  # seconds an answer is kept for its sender
COMMAND_WAIT = 60.0  # seconds a sender waits for the driving coordinator's answer
ANSWER_POLL = 0.02


class Commands(Loading):
    """Cancel and retry for the :class:`~farm.coordinator.engine.Coordinator` (a base of it)."""

    lease: CoordinatorLease

    def _hold(self) -> bool:
        """Take or renew the coordinator lease; whether this process drives the state (the Coordinator's)."""
        raise NotImplementedError

    # -- the public commands -------------------------------------------------------------------------------------
    def cancel(self, run_id: str) -> Run:
        """Cancel a run: its builds in flight can no longer be taken up, and the driving coordinator revokes them
        (:meth:`~farm.coordinator.runs.RunStore.cancel`)."""
        self.runs.get(run_id)  # an unknown run is refused here, at once
        self._command({"command": "cancel", "run": run_id}, lambda now: self._cancel_here(run_id, now))
        return self.runs.get(run_id)

    def retry(self, run_id: str, name: str) -> Job:
        """Send a failed, blocked or cancelled build back to waiting (with its blocked and cancelled companions)."""
        self.runs.get(run_id)
        self._command({"command": "retry", "run": run_id, "name": name}, lambda now: self._retry_here(run_id, name))
        return self.runs.jobs(run_id, names=[name], recipes=False)[name]

    # -- where a command is done ---------------------------------------------------------------------------------
    def _command(self, message: dict[str, Any], here: Callable[[float], None]) -> None:
        if self.lease.held:  # this process drives the state, and is between two ticks
            here(time.time())
            return
        deadline = time.monotonic() + COMMAND_WAIT
        sent: str | None = None
        while True:
            if self._hold():
                try:
                    here(time.time())
                finally:
                    self.lease.release()
                return
            if sent is None:
                sent = uuid.uuid4().hex
                self.kv.rpush(layout.INBOX, json.dumps(message | {"id": sent}, sort_keys=True).encode())
            answer = self._answer(sent, deadline)
            if answer is not None:
                error = answer.get("error")
                if isinstance(error, dict):
                    raise FarmError.of(
                        str(error.get("code") or E.COORDINATOR_BUSY),
                        str(error.get("message") or "the coordinator refused the command"),
                        hint=str(error.get("hint") or ""),
                    )
                return
            if time.monotonic() >= deadline:
                holder = self.lease.holder() or {}
                raise FarmError(
                    E.COORDINATOR_BUSY,
                    f"the coordinator driving {self.kv.url} (pid {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')}) did not take up the {message['command']} within {COMMAND_WAIT:.0f} s",
                    hint="check that it is running and not stuck ('mangos-farm status'); it applies the command "
                    "when it next ticks, or run the command again once it has stopped",
                )

    def _answer(self, command_id: str, deadline: float) -> dict[str, Any] | None:
        """The driving coordinator's answer, waiting until ``deadline`` or until the lease falls free (None)."""
        key = ANSWER + command_id
        while time.monotonic() < deadline:
            raw = self.kv.get(key)
            if raw is not None:
                self.kv.delete(key)
                found = json.loads(raw)
                return found if isinstance(found, dict) else {}
            if self.lease.holder() is None:
                return None
            time.sleep(ANSWER_POLL)
        return None

    def _cancel_here(self, run_id: str, now: float) -> None:
        self.runs.cancel(run_id, now)
        self._reload(run_id, now)  # revokes what this process has in flight, and recounts

    def _retry_here(self, run_id: str, name: str) -> None:
        self.runs.retry(run_id, name)

    # -- in the driving coordinator's tick -----------------------------------------------------------------------
    def _apply_commands(self, messages: list[dict[str, Any]], now: float) -> None:
        """Apply the commands other processes sent (before this tick takes up any outcome), and answer each."""
        for message in messages:
            run_id, kind = str(message.get("run") or ""), message.get("command")
            try:
                if kind == "cancel":
                    self._cancel_here(run_id, now)
                elif kind == "retry":
                    self._retry_here(run_id, str(message.get("name") or ""))
                    self._reload(run_id, now)
                else:
                    raise FarmError(E.COORDINATOR_BUSY, f"unknown command {kind!r}", hint="upgrade the sender")
                answer: dict[str, Any] = {"ok": True}
            except FarmError as exc:
                log.info("command %s of run %s refused: %s", kind, run_id, exc.message)
                answer = {"error": exc.to_json()}
            if message.get("id"):
                self.kv.set(ANSWER + str(message["id"]), json.dumps(answer).encode(), ttl=ANSWER_TTL)


def is_command(message: dict[str, Any]) -> bool:
    return "command" in message
