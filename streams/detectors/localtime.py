"""Event time -> local wall time (hour of day, weekday) without per-call tz math.

The UTC offset is looked up once per UTC hour through `zoneinfo` and cached,
so a DST zone stays right and Asia/Shanghai (fixed UTC+8) costs a dict hit.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo


class LocalClock:
    __slots__ = ("_cache", "tz")

    def __init__(self, tz: ZoneInfo | None) -> None:
        self.tz = tz
        self._cache: dict[int, int] = {}

    def offset(self, t: float) -> int:
        """UTC offset in seconds at epoch second t."""
        if self.tz is None:
            return 0
        h = int(t // 3600)
        off = self._cache.get(h)
        if off is None:
            if len(self._cache) > 50_000:
                self._cache.clear()
            delta = datetime.fromtimestamp(h * 3600, UTC).astimezone(self.tz).utcoffset()
            off = int(delta.total_seconds()) if delta is not None else 0
            self._cache[h] = off
        return off

    def local_seconds(self, t: float) -> float:
        """Seconds since 1970-01-01 00:00 local wall time (for day/hour arithmetic)."""
        return t + self.offset(t)

    def second_of_day(self, t: float) -> float:
        return (t + self.offset(t)) % 86400.0

    def hour(self, t: float) -> int:
        return int(((t + self.offset(t)) % 86400.0) // 3600)

    def weekday(self, t: float) -> int:
        """0 = Monday (1970-01-01 was a Thursday)."""
        return (int((t + self.offset(t)) // 86400) + 3) % 7
