"""The peer protocol's one dump/load: every event round-trips, bad lines are
named, unknown events are skipped."""

from __future__ import annotations

import json

import pytest

from roost import events
from roost.errors import PeerProtocolError

SAMPLES: list[events.Event] = [
    events.Started(at=1700000000.5, t=0.0),
    events.Progress(progress=0.5, down=100, up=7, rate_down=1000, peers=3, t=1.25),
    events.Progress(progress=1.0, down=100, up=7, rate_down=0, peers=3, feed=40),
    events.HashFailed(piece=7),
    events.PeerBanned(address="198.18.0.9"),
    events.TrackerWarning(url="http://127.0.0.1:1/announce", message="unreachable"),
    events.Complete(),
    events.Installed(path="/opt/app/v1", already=True),
    events.Failed(error="destination /x is not empty", kind="DestinationError"),
    events.Done(ok=False, seconds=1.5, down=0, up=0),
]


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.name)
def test_round_trip(event: events.Event) -> None:
    line = events.dump(event)
    assert "\n" not in line and json.loads(line)["event"] == event.name
    assert events.load(line) == event
    assert events.load(line.encode()) == event


def test_wire_format_is_the_documented_one() -> None:
    line = events.dump(events.Progress(progress=0.25, down=1, up=2, rate_down=3, peers=4, t=0.5))
    assert json.loads(line) == {
        "event": "progress",
        "progress": 0.25,
        "down": 1,
        "up": 2,
        "rate_down": 3,
        "peers": 4,
        "t": 0.5,
    }
    # An int where a float is wanted is fine (JSON has one number type).
    assert events.load('{"event": "started", "at": 17}') == events.Started(at=17.0)


def test_unknown_events_are_skipped() -> None:
    assert events.load('{"event": "from_the_future", "x": 1}') is None


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("not json", "is not JSON"),
        ("[1, 2]", "not an object"),
        ('{"no": "event"}', "not an object with an 'event'"),
        ('{"event": "hash_failed"}', "has no 'piece'"),
        ('{"event": "hash_failed", "piece": "7"}', "'piece' is not int"),
        ('{"event": "done", "ok": 1, "seconds": 1, "down": 0, "up": 0}', "'ok' is not bool"),
        (
            '{"event": "progress", "progress": true, "down": 0, "up": 0, "rate_down": 0, '
            '"peers": 0}',
            "'progress' is not float",
        ),
        ('{"event": "installed", "path": null}', "'path' is not str"),
        ("[" * 60_000, "is not JSON"),
        ('{"event": "failed", "error": "' + "x" * 70_000 + '"}', "too long"),
    ],
)
def test_bad_lines_are_named(line: str, why: str) -> None:
    with pytest.raises(PeerProtocolError, match=why):
        events.load(line)
