"""Raw test data for the events pipeline: one folder of JSON-lines files per landing day.

Each day ``landing/date=YYYY-MM-DD/events-000N.jsonl`` holds that day's events plus what
real feeds deliver too: late events (an event of the previous day received today), exact
duplicates (the same line twice) and malformed lines (bad JSON, a missing field, a
non-numeric amount, an unreadable event_time). The output depends only on the seed and
the day, so re-generating one day with the same seed gives the same files, and with
another seed gives new data for that day only.

    python examples/events/generate.py data/landing --start 2024-01-01 --days 7
"""

from __future__ import annotations

import argparse
import json
import random
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

FIELDS = ("event_id", "event_time", "user_id", "event_type", "amount")
EVENT_TYPES = ("view", "add_to_cart", "purchase", "refund")
EVENT_WEIGHTS = (60, 20, 15, 5)
FILES_PER_DAY = 2
LATE_SHARE = 0.03  # events of the previous day that land in today's folder
DUPLICATE_SHARE = 0.01
MALFORMED_SHARE = 0.01
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def generate(
    landing: Path, start: date, days: int, seed: int = 7, events_per_day: int = 2000
) -> None:
    """Write ``days`` landing folders from ``start`` on, replacing files already there."""
    for offset in range(days):
        day = start + timedelta(days=offset)
        folder = Path(landing) / f"date={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("events-*.jsonl"):
            old.unlink()
        lines = day_lines(day, seed, events_per_day)
        for n in range(FILES_PER_DAY):
            chunk = lines[n::FILES_PER_DAY]
            (folder / f"events-{n:04d}.jsonl").write_text("".join(f"{x}\n" for x in chunk))


def day_lines(day: date, seed: int, events_per_day: int) -> list[str]:
    """The lines landing on ``day``, shuffled."""
    rng = random.Random(f"{seed}:{day.isoformat()}")
    late = int(events_per_day * LATE_SHARE)
    events = [
        _event(rng, day - timedelta(days=1) if i < late else day, late=i < late)
        for i in range(events_per_day)
    ]
    lines = [json.dumps(e) for e in events]
    lines += rng.sample(lines, int(events_per_day * DUPLICATE_SHARE))
    lines += [
        _malformed(rng, rng.choice(events), kind=i % 4)
        for i in range(int(events_per_day * MALFORMED_SHARE))
    ]
    rng.shuffle(lines)
    return lines


def _event(rng: random.Random, day: date, late: bool) -> dict[str, Any]:
    # Late events happened in the last hours of their day.
    second = rng.randrange(20 * 3600, 86400) if late else rng.randrange(86400)
    when = datetime.combine(day, time(), UTC) + timedelta(seconds=second)
    kind = rng.choices(EVENT_TYPES, EVENT_WEIGHTS)[0]
    if kind == "view":
        amount = 0.0
    elif kind == "refund":
        amount = -round(rng.lognormvariate(3.0, 0.8), 2)
    else:
        amount = round(rng.lognormvariate(3.2 if kind == "purchase" else 2.8, 0.9), 2)
    return {
        "event_id": f"{rng.getrandbits(64):016x}",
        "event_time": when.strftime(TIME_FORMAT),
        "user_id": f"u{int(400 * rng.random() ** 2) + 1:04d}",  # a few heavy users
        "event_type": kind,
        "amount": amount,
    }


def _malformed(rng: random.Random, event: dict[str, Any], kind: int) -> str:
    bad = dict(event, event_id=f"{rng.getrandbits(64):016x}")
    if kind == 0:  # cut off mid-line
        text = json.dumps(bad)
        return text[: rng.randrange(1, len(text) - 1)]
    if kind == 1:
        del bad[rng.choice(FIELDS)]
    elif kind == 2:
        bad["amount"] = rng.choice(["n/a", "12,50", "", "free"])
    else:
        bad["event_time"] = rng.choice(["yesterday", "2024-13-45T99:00:00Z", "1704067200"])
    return json.dumps(bad)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("landing", type=Path, help="folder of the landing zone")
    parser.add_argument("--start", type=date.fromisoformat, required=True, help="YYYY-MM-DD")
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--events-per-day", type=int, default=2000)
    args = parser.parse_args(argv)
    generate(args.landing, args.start, args.days, args.seed, args.events_per_day)
    last = args.start + timedelta(days=args.days - 1)
    print(f"wrote {args.days} day(s) {args.start}..{last} under {args.landing}")


if __name__ == "__main__":
    main()
