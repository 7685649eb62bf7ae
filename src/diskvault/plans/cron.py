"""Cron expressions (the five classic fields) for plan schedules: when they fire, when they last
fired, and the same times as systemd ``OnCalendar=`` specs.

    minute hour day-of-month month day-of-week      e.g. "0 2 * * 0" = Sundays at 02:00
    fields: *  a  a-b  */s  a-b/s  a/s  lists a,b ; names jan..dec, sun..sat ; 0 and 7 = Sunday
    @hourly @daily @midnight @weekly @monthly @yearly @annually

Day matching follows Vixie cron: when both day fields are restricted (neither starts with ``*``),
a day matches if either does; otherwise both must. Times are local, naive datetimes.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

from diskvault.errors import UsageError

ALIASES = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0",
           "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"}
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
SYSTEMD_DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
FIELDS = (("minute", 0, 59, ()), ("hour", 0, 23, ()), ("day of month", 1, 31, ()),
          ("month", 1, 12, MONTHS), ("day of week", 0, 7, DAYS))
SEARCH_DAYS = 366 * 8 + 2  # long enough for "29 Feb" and any other valid expression


def _value(text: str, low: int, names: tuple[str, ...], name: str) -> int:
    if text.lower() in names:
        return names.index(text.lower()) + (low if name == "month" else 0)
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a number for the {name} field")
    return int(text)


def _field(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() else 0
        if step_text and step < 1:
            raise ValueError(f"bad step {step_text!r} in the {name} field")
        if body == "*":
            start, end = low, high
        elif "-" in body:
            a, b = body.split("-", 1)
            start, end = _value(a, low, names, name), _value(b, low, names, name)
        else:
            start = _value(body, low, names, name)
            end = high if step else start
        if not (low <= start <= high and low <= end <= high) or start > end:
            raise ValueError(f"{part!r} is out of range {low}-{high} for the {name} field")
        values.update(range(start, end + 1, step or 1))
    if name == "day of week" and 7 in values:
        values = (values - {7}) | {0}
    return frozenset(values)


class Cron:
    """One parsed expression; raises UsageError naming what is wrong."""

    def __init__(self, text: str) -> None:
        self.text = text.strip()
        fields = ALIASES.get(self.text.lower(), self.text).split()
        if len(fields) != 5:
            raise UsageError(f"cron expression {text!r} needs 5 fields (minute hour day month weekday)")
        try:
            parsed = [_field(f, *spec) for f, spec in zip(fields, FIELDS)]
        except ValueError as e:
            raise UsageError(f"cron expression {text!r}: {e}") from None
        self.minutes, self.hours, self.doms, self.months, self.dows = (sorted(p) for p in parsed)
        self.dom_star, self.dow_star = fields[2].startswith("*"), fields[4].startswith("*")

    def __str__(self) -> str:
        return self.text

    def matches_day(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        dom_ok, dow_ok = d.day in self.doms, (d.weekday() + 1) % 7 in self.dows
        return dom_ok and dow_ok if self.dom_star or self.dow_star else dom_ok or dow_ok

    def _times(self) -> list[time]:
        return [time(h, m) for h in self.hours for m in self.minutes]

    def next_after(self, t: datetime) -> datetime:
        """The first time strictly after ``t``."""
        for n in range(SEARCH_DAYS):
            d = t.date() + timedelta(days=n)
            if self.matches_day(d):
                for at in self._times():
                    candidate = datetime.combine(d, at)
                    if candidate > t:
                        return candidate
        raise UsageError(f"cron expression {self.text!r} never fires")

    def last_at_or_before(self, t: datetime) -> datetime | None:
        """The latest time not after ``t`` (None if there is none in the last eight years)."""
        for n in range(SEARCH_DAYS):
            d = t.date() - timedelta(days=n)
            if self.matches_day(d):
                for at in reversed(self._times()):
                    candidate = datetime.combine(d, at)
                    if candidate <= t:
                        return candidate
        return None

    def on_calendar(self) -> list[str]:
        """systemd OnCalendar specs that fire at exactly these times (two when cron ORs the days)."""

        def values(vals: list[int], full: range, width: int) -> str:
            return "*" if set(vals) == set(full) else ",".join(f"{v:0{width}d}" for v in vals)

        month = values(self.months, range(1, 13), 2)
        clock = f"{values(self.hours, range(24), 2)}:{values(self.minutes, range(60), 2)}:00"
        dom = values(self.doms, range(1, 32), 2)
        dow = "" if set(self.dows) == set(range(7)) else ",".join(SYSTEMD_DAYS[d] for d in self.dows) + " "
        if not self.dom_star and not self.dow_star:
            return [f"*-{month}-{dom} {clock}", f"{dow}*-{month}-* {clock}"]
        return [f"{dow}*-{month}-{dom} {clock}"]
