"""Log times in UTC: the abbreviation after a log time (EST, CET, +03) placed through the
server's log_timezone, and the window comparisons a scan makes on whole Arrow arrays."""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa


UTC_NAMES = ("UTC", "GMT", "UCT", "Z")


def zone_offset(zone: str) -> int | None:
    """Minutes east of UTC of a numeric zone (+03, -0330, -03:30) or a UTC name; None for any
    other name (an abbreviation such as EST means nothing without the zone it belongs to).

    >>> zone_offset("-03:30"), zone_offset("UTC"), zone_offset("+05"), zone_offset("EST")
    (-210, 0, 300, None)
    """
    if zone in UTC_NAMES:
        return 0
    m = re.fullmatch(r"([+-])(\d{2}):?(\d{2})?", zone)
    if not m:
        return None
    return (int(m.group(2)) * 60 + int(m.group(3) or 0)) * (1 if m.group(1) == "+" else -1)


class LogZone:
    """The server's log_timezone, through which the abbreviation after a log time (EST, CET,
    CEST: what %t, %m, csvlog and jsonlog write) is placed in UTC. Within one zone an
    abbreviation stands for one offset, so the ambiguous hour when clocks go back is told apart
    by it. An abbreviation the zone does not use (or with no zone known) is read as UTC and
    kept in `unresolved`, so that the scan can say its window may be off."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.tz: zoneinfo.ZoneInfo | None = None
        self.error = ""
        if name:
            try:
                self.tz = zoneinfo.ZoneInfo(name)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
                self.error = f"log_timezone '{name}' is not a known zone ({exc.__class__.__name__})"
        self.unresolved: set[str] = set()
        self._offsets: dict[str, int] = {}

    def offset(self, abbrev: str, near: dt.datetime) -> int:
        """Minutes east of UTC of the times written with ABBREV around NEAR (naive, local)."""
        if abbrev in self._offsets:
            return self._offsets[abbrev]
        minutes = zone_offset(abbrev)
        if self.tz is not None and (minutes is None or abbrev in UTC_NAMES):
            for fold in (0, 1):
                local = near.replace(tzinfo=self.tz, fold=fold)
                if abbrev in (local.tzname(), ""):
                    minutes = int((local.utcoffset() or dt.timedelta()).total_seconds() // 60)
                    break
        if minutes is None:
            self.unresolved.add(abbrev)
            return 0
        self._offsets[abbrev] = minutes
        return minutes


def _naive(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text[:19])


def to_utc(log_time: pa.Array, zone: LogZone | None = None) -> pa.Array:
    """'2026-11-27 23:35:17.123 EST' (or UTC, +03, -0330; or %n's epoch '1764286517.123')
    strings as UTC timestamps, vectorized: one offset per distinct zone."""
    import pyarrow as pa
    import pyarrow.compute as pc

    zone = zone or LogZone()
    parts = pc.extract_regex(log_time, r"^(?P<t>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)"
                                       r" ?(?P<z>[^ ]*)")
    t = pc.cast(pc.struct_field(parts, "t"), pa.timestamp("us"))  # (null where no match)
    names = pc.struct_field(parts, "z")
    for abbrev in (z for z in pc.unique(names).to_pylist() if z is not None):
        at = pc.index(names, abbrev).as_py()
        near = t[at].as_py()
        if minutes := zone.offset(abbrev, near):
            shifted = pc.subtract(t, pa.scalar(minutes * 60_000_000, pa.duration("us")))
            t = pc.if_else(pc.equal(names, abbrev), shifted, t)
    if parts.null_count > log_time.null_count:  # %n: seconds since the epoch
        epoch = pc.match_substring_regex(log_time, r"^\d+(?:\.\d+)?$")
        seconds = pc.cast(pc.if_else(epoch, log_time, None), pa.float64())
        micros = pc.cast(pc.round(pc.multiply(seconds, 1e6)), pa.int64())
        t = pc.if_else(epoch, pc.cast(micros, pa.timestamp("us")), t)
    return t.cast(pa.timestamp("us", tz="UTC"))


def at_or_after(log_time: pa.Array, since: dt.datetime, zone: LogZone | None = None) -> pa.Array:
    """Which records were logged at or after SINCE (to the millisecond; to the second for %t,
    whose times are truncated)."""
    return _compare(log_time, since, zone, after=True)


def at_or_before(log_time: pa.Array, until: dt.datetime, zone: LogZone | None = None) -> pa.Array:
    """Which records were logged at or before UNTIL (to the millisecond, or second for %t)."""
    return _compare(log_time, until, zone, after=False)


def _compare(log_time: pa.Array, when: dt.datetime, zone: LogZone | None,
             after: bool) -> pa.Array:
    """Compared as strings when the block has one zone (nearly always: a file is written in
    log_timezone), which is ten times cheaper than parsing every time."""
    import pyarrow as pa
    import pyarrow.compute as pc

    zone = zone or LogZone()
    first = next((v for v in log_time[:1].to_pylist() if v), "")
    precise = first[19:20] == "." or (" " not in first and "." in first)
    step = dt.timedelta(milliseconds=1) if precise else dt.timedelta(seconds=1)
    utc = when.astimezone(dt.UTC).replace(tzinfo=None)
    utc -= (utc - dt.datetime.min) % step  # the time as the log would write it
    if not after:
        utc += step  # before the next millisecond (second)
    abbrev = first.rsplit(" ", 1)[1] if first.count(" ") >= 2 else ""
    if abbrev and pc.all(pc.ends_with(log_time, " " + abbrev)).as_py():
        local = utc + dt.timedelta(minutes=zone.offset(abbrev, _naive(first)))
        text = local.strftime("%Y-%m-%d %H:%M:%S.%f")[:23] if precise else \
            local.strftime("%Y-%m-%d %H:%M:%S")
        mask = (pc.greater_equal if after else pc.less)(log_time, text)
    else:
        bound = pa.scalar(utc.replace(tzinfo=dt.UTC), pa.timestamp("us", tz="UTC"))
        mask = (pc.greater_equal if after else pc.less)(to_utc(log_time, zone), bound)
    return pc.fill_null(mask, False)
