"""Hysteresis and cooldown: turns a detector's raw verdicts into reports that do not flap.

The state machine, per detector:

* ``enter_after`` consecutive drifted verdicts enter DRIFT; ``exit_after`` consecutive clean
  ones leave it (to NO_DRIFT). Insufficient verdicts hold a DRIFT state as it is: missing data
  is no evidence that the drift went away.
* Outside DRIFT, the first clean verdict sets NO_DRIFT, and ``exit_after`` consecutive
  insufficient verdicts set INSUFFICIENT_DATA (one odd window is not worth a report).
* A report is due on every state change. While a drift lasts, its DRIFT report is repeated
  once per ``cooldown_s`` (a reminder for a retrain that did not fix it).
* After a DRIFT report the detector re-arms once it has seen ``exit_after`` consecutive clean
  verdicts (the drift went away, as confirmed as leaving DRIFT needs). A DRIFT entered while
  armed is a new episode and is reported at once, cooldown or not: a false alarm must not hide
  a real drift that begins minutes later. A DRIFT entered unarmed (after ``reset``, with the
  reported drift never seen gone) waits for the cooldown, and is reported then if it is still
  there. Retrain storms from a flapping detector are the trainer's to coalesce (its debouncer).

Time is passed in (seconds), so tests drive it.
"""

from __future__ import annotations

from dataclasses import dataclass

from driftline.services.drift.detectors import Status


@dataclass(frozen=True)
class HysteresisPolicy:
    enter_after: int = 2
    exit_after: int = 3
    cooldown_s: float = 300.0

    def __post_init__(self) -> None:
        if self.enter_after < 1 or self.exit_after < 1 or self.cooldown_s < 0:
            raise ValueError("enter_after and exit_after must be >= 1 and cooldown_s >= 0")


class Hysteresis:
    """Debounced state of one detector; ``observe`` says whether a report is due."""

    def __init__(self, policy: HysteresisPolicy) -> None:
        self.policy = policy
        self.state = Status.UNSPECIFIED
        self._drifted = 0
        self._clean = 0
        self._insufficient = 0
        self._last_drift_report: float | None = None
        self._drift_unreported = False
        #: Whether a new DRIFT episode would be reported at once (see the module's docstring).
        self._armed = True

    def observe(self, verdict: Status, now: float) -> Status | None:
        """Account for one verdict at time ``now``; the status to report, or None."""
        if verdict is Status.DRIFT:
            self._drifted, self._clean, self._insufficient = self._drifted + 1, 0, 0
        elif verdict is Status.NO_DRIFT:
            self._drifted, self._clean, self._insufficient = 0, self._clean + 1, 0
        elif verdict is Status.INSUFFICIENT_DATA:
            self._insufficient += 1
        else:
            raise ValueError(f"not a verdict: {verdict!r}")

        if self._clean >= self.policy.exit_after:
            self._armed = True
        previous = self.state
        if self.state is Status.DRIFT:
            if self._clean >= self.policy.exit_after:
                self.state = Status.NO_DRIFT
        elif self._drifted >= self.policy.enter_after:
            self.state = Status.DRIFT
            self._drift_unreported = True
        elif verdict is Status.NO_DRIFT:
            self.state = Status.NO_DRIFT
        elif self._insufficient >= self.policy.exit_after:
            self.state = Status.INSUFFICIENT_DATA

        if self.state is Status.DRIFT:
            # Due when newly entered (and not yet reported), or as a reminder while it lasts.
            due = self._drift_unreported or verdict is Status.DRIFT
            if due and (self._armed or self._cooled(now)):
                self._last_drift_report = now
                self._drift_unreported = False
                self._armed = False
                return Status.DRIFT
            return None
        self._drift_unreported = False
        return self.state if self.state is not previous else None

    def _cooled(self, now: float) -> bool:
        last = self._last_drift_report
        return last is None or now - last >= self.policy.cooldown_s

    def reset(self) -> None:
        """Forget the state (a new reference); the cooldown of DRIFT reports, and whether the
        detector is armed, survive: a drift that outlives a retrain is a reminder, not news."""
        self.state = Status.UNSPECIFIED
        self._drifted = self._clean = self._insufficient = 0
        self._drift_unreported = False
