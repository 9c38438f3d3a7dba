"""Restart policy: the pure core of a supervisor (no I/O, no clock, no trio).

Invariants:
- :func:`should_restart` is Erlang's rule: a ``PERMANENT`` child is restarted after any exit,
  a ``TRANSIENT`` child only after a crash, a ``TEMPORARY`` child never.
- :class:`RestartWindow` is Erlang's restart intensity: at most ``intensity`` restarts within
  any ``period`` seconds. ``record(now)`` forgets restarts at or before ``now - period``, adds
  ``now``, and allows the restart iff the restarts kept (this one included) number at most
  ``intensity``. So ``intensity=0`` allows no restart at all, and with ``intensity=3`` the
  fourth restart inside one period is refused.
- A window is a frozen value: ``record`` returns a new window and never mutates; times are
  whatever clock the caller passes (``trio.current_time()`` in the supervisor).
- :meth:`RestartWindow.quiet_since` tells a driver whether the last restart is older than one
  period; the supervisor then starts its backoff schedule over.
"""

from __future__ import annotations

import enum
import math

import attrs

__all__ = ["Restart", "Strategy", "RestartWindow", "should_restart"]


class Restart(enum.Enum):
    """When a supervisor restarts a child (Erlang's restart types)."""

    #: Always restarted, whether it crashed or returned normally.
    PERMANENT = "permanent"
    #: Restarted only after a crash; a normal exit leaves it stopped.
    TRANSIENT = "transient"
    #: Never restarted; its exit (normal or crash) leaves it stopped for good.
    TEMPORARY = "temporary"


class Strategy(enum.Enum):
    """Which children a supervisor restarts when one of them is to be restarted."""

    #: Restart only the child that exited.
    ONE_FOR_ONE = "one_for_one"
    #: Stop every other child too, then start all of them again (in spec order).
    ONE_FOR_ALL = "one_for_all"


def should_restart(restart: Restart, *, crashed: bool) -> bool:
    """Whether a child that just exited is to be restarted.

    Args:
        restart: the child's restart type.
        crashed: ``True`` if it exited by raising, ``False`` for a normal exit.

    Returns:
        ``True`` for a permanent child, ``crashed`` for a transient one, ``False`` for a
        temporary one.
    """
    if restart is Restart.PERMANENT:
        return True
    if restart is Restart.TRANSIENT:
        return crashed
    return False


def _check_intensity(_instance: object, _attribute: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"intensity must be an int >= 0, got {value!r}")


def _check_period(_instance: object, _attribute: object, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"period must be finite and > 0 seconds, got {value!r}")


@attrs.frozen
class RestartWindow:
    """At most ``intensity`` restarts within ``period`` seconds (a pure value).

    Attributes:
        intensity: the most restarts allowed within one period (``>= 0``).
        period: the length of the sliding window, in seconds (``> 0``).
        times: the times of the restarts still inside the window, oldest first.
    """

    intensity: int = attrs.field(validator=_check_intensity)
    period: float = attrs.field(converter=float, validator=_check_period)
    times: tuple[float, ...] = ()

    def record(self, now: float) -> tuple["RestartWindow", bool]:
        """Count a restart at ``now``.

        Args:
            now: the time of the restart, on the same clock as earlier calls.

        Returns:
            ``(window, allowed)``: the window with ``now`` added and restarts at or before
            ``now - period`` dropped, and whether this restart stays within the intensity.
        """
        kept = self._recent(now) + (now,)
        return attrs.evolve(self, times=kept), len(kept) <= self.intensity

    def count(self, now: float) -> int:
        """How many recorded restarts lie within the period that ends at ``now``."""
        return len(self._recent(now))

    def quiet_since(self, last: float | None, now: float) -> bool:
        """Whether a restart at time ``last`` (``None``: never) is at least one period old.

        Args:
            last: the time of a unit's previous restart, or ``None`` if it never restarted.
            now: the current time.

        Returns:
            ``True`` if ``last`` is ``None`` or ``last <= now - period``.
        """
        return last is None or last <= now - self.period

    def _recent(self, now: float) -> tuple[float, ...]:
        threshold = now - self.period
        return tuple(t for t in self.times if t > threshold)
