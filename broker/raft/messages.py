"""Raft log entries and peer messages, and their plain-list wire form.

Every message is a frozen dataclass carrying `from_id`, `to` and `term`. `to_wire()` turns it into
a list of ints, bools and bytes that msgpack can pack as-is; `message_from_wire()` turns such a list
back into a message and checks its shape first, so a malformed frame from the network costs its
sender an error (`WireError`, a `ValueError`) and never reaches, let alone corrupts, a `RaftNode`.

Wire layout: `[type_code, from_id, to, term, *fields]`, fields in dataclass order. An entry is
`[term, index, kind, data]`. "No value" is encoded as 0 (index 0 / term 0 never name a real entry,
and node ids start at 1).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

# Largest integer we accept from the wire: terms, indexes and ids are int64 in every other
# tidelog format, so anything bigger is a corrupt or hostile frame.
MAX_WIRE_INT = (1 << 63) - 1
# An AppendEntries from a correct leader is capped by RaftConfig.max_entries_per_append; this
# is the hard ceiling a decoder accepts before building any Entry objects.
MAX_WIRE_ENTRIES = 1 << 16


class WireError(ValueError):
    """A peer message on the wire has the wrong shape or impossible values."""


class EntryKind(enum.IntEnum):
    NORMAL = 0  # application data (a metadata record)
    NOOP = 1  # appended by a new leader so it can commit something of its own term


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""

    def to_wire(self) -> list[Any]:
        return [self.term, self.index, int(self.kind), self.data]

    @classmethod
    def from_wire(cls, obj: Any) -> Entry:
        if not isinstance(obj, (list, tuple)) or len(obj) != 4:
            raise WireError("entry must be a list [term, index, kind, data]")
        term, index, kind, data = obj
        _check_uint(term, "entry term", minimum=1)
        _check_uint(index, "entry index", minimum=1)
        if type(kind) is not int or kind not in EntryKind._value2member_map_:
            raise WireError(f"entry kind {kind!r} is unknown")
        _check_bytes(data, "entry data")
        return cls(term, index, EntryKind(kind), bytes(data))


def _wire(kind: str) -> Any:
    """Declare a message field together with how it is checked on the wire."""
    return field(metadata={"wire": kind})


@dataclass(frozen=True, slots=True)
class Message:
    from_id: int
    to: int
    term: int

    WIRE_TYPE: ClassVar[int] = -1

    def to_wire(self) -> list[Any]:
        out: list[Any] = [self.WIRE_TYPE, self.from_id, self.to, self.term]
        for f in _extra_fields(type(self)):
            value = getattr(self, f.name)
            if f.metadata["wire"] == "entries":
                value = [e.to_wire() for e in value]
            out.append(value)
        return out

    def validate(self) -> None:
        """Cross-field checks beyond per-field types; subclasses add theirs."""


@dataclass(frozen=True, slots=True)
class PreVote(Message):
    """"Would you vote for me at `term`?" Sent with term+1 without bumping the sender's term."""

    last_log_index: int = _wire("uint")
    last_log_term: int = _wire("uint")
    WIRE_TYPE: ClassVar[int] = 1


@dataclass(frozen=True, slots=True)
class PreVoteResp(Message):
    granted: bool = _wire("bool")
    WIRE_TYPE: ClassVar[int] = 2


@dataclass(frozen=True, slots=True)
class Vote(Message):
    last_log_index: int = _wire("uint")
    last_log_term: int = _wire("uint")
    WIRE_TYPE: ClassVar[int] = 3


@dataclass(frozen=True, slots=True)
class VoteResp(Message):
    granted: bool = _wire("bool")
    WIRE_TYPE: ClassVar[int] = 4


@dataclass(frozen=True, slots=True)
class AppendEntries(Message):
    prev_index: int = _wire("uint")
    prev_term: int = _wire("uint")
    entries: tuple[Entry, ...] = _wire("entries")
    commit: int = _wire("uint")
    WIRE_TYPE: ClassVar[int] = 5

    def validate(self) -> None:
        """A leader only ships a contiguous run of its own log: indexes follow prev_index one by
        one and terms never decrease nor exceed the leader's term. Anything else is corrupt."""
        expected_index, floor_term = self.prev_index + 1, self.prev_term
        for entry in self.entries:
            if entry.index != expected_index:
                raise WireError(f"entry index {entry.index} breaks the run (expected {expected_index})")
            if not floor_term <= entry.term <= self.term:
                raise WireError(f"entry term {entry.term} outside [{floor_term}, {self.term}]")
            expected_index, floor_term = expected_index + 1, entry.term


@dataclass(frozen=True, slots=True)
class AppendResp(Message):
    """Answer to AppendEntries.

    success: `index` is the highest index known to match the leader's log.
    reject: `index` is the rejected prev_index; `hint_index` is where the follower suggests the
    leader tries next, and `hint_term` (0 if none) the term of the follower's conflicting entry,
    so the leader can skip a whole term per round trip instead of one entry.
    """

    success: bool = _wire("bool")
    index: int = _wire("uint")
    hint_index: int = _wire("uint")
    hint_term: int = _wire("uint")
    WIRE_TYPE: ClassVar[int] = 6


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """Leader liveness plus commit index; `read_ctx` (may be empty) tags a ReadIndex round."""

    commit: int = _wire("uint")
    read_ctx: bytes = _wire("bytes")
    WIRE_TYPE: ClassVar[int] = 7


@dataclass(frozen=True, slots=True)
class HeartbeatResp(Message):
    read_ctx: bytes = _wire("bytes")
    WIRE_TYPE: ClassVar[int] = 8


@dataclass(frozen=True, slots=True)
class InstallSnapshot(Message):
    """The whole application snapshot up to (snapshot_index, snapshot_term), in one message."""

    snapshot_index: int = _wire("uint")
    snapshot_term: int = _wire("uint")
    data: bytes = _wire("bytes")
    WIRE_TYPE: ClassVar[int] = 9

    def validate(self) -> None:
        if self.snapshot_index < 1 or not 1 <= self.snapshot_term <= self.term:
            raise WireError("snapshot index/term out of range")


@dataclass(frozen=True, slots=True)
class SnapshotResp(Message):
    """`index`: the highest index the follower now knows matches the leader's log."""

    index: int = _wire("uint")
    WIRE_TYPE: ClassVar[int] = 10


MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.WIRE_TYPE: cls
    for cls in (PreVote, PreVoteResp, Vote, VoteResp, AppendEntries, AppendResp, Heartbeat,
                HeartbeatResp, InstallSnapshot, SnapshotResp)
}


def message_from_wire(obj: Any) -> Message:
    """Build a message from its wire list, or raise WireError. Never raises anything else."""
    if not isinstance(obj, (list, tuple)) or len(obj) < 4:
        raise WireError("message must be a list [type, from_id, to, term, ...]")
    cls = MESSAGE_TYPES.get(obj[0]) if type(obj[0]) is int else None
    if cls is None:
        raise WireError(f"unknown message type {obj[0]!r}")
    extra = _extra_fields(cls)
    if len(obj) != 4 + len(extra):
        raise WireError(f"{cls.__name__} needs {4 + len(extra)} items, got {len(obj)}")
    _check_uint(obj[1], "from_id", minimum=1)
    _check_uint(obj[2], "to", minimum=1)
    _check_uint(obj[3], "term", minimum=1)
    values = [_field_from_wire(f.metadata["wire"], raw, f.name) for f, raw in zip(extra, obj[4:])]
    message = cls(obj[1], obj[2], obj[3], *values)
    message.validate()
    return message


def _extra_fields(cls: type[Message]) -> tuple[Any, ...]:
    return tuple(f for f in fields(cls) if "wire" in f.metadata)


def _field_from_wire(kind: str, raw: Any, name: str) -> Any:
    if kind == "uint":
        return _check_uint(raw, name)
    if kind == "bool":
        if type(raw) is not bool:
            raise WireError(f"{name} must be a bool")
        return raw
    if kind == "bytes":
        return bytes(_check_bytes(raw, name))
    if not isinstance(raw, (list, tuple)) or len(raw) > MAX_WIRE_ENTRIES:
        raise WireError(f"{name} must be a list of at most {MAX_WIRE_ENTRIES} entries")
    return tuple(Entry.from_wire(item) for item in raw)


def _check_uint(value: Any, name: str, minimum: int = 0) -> int:
    # bool is an int subclass in Python; a True where an index belongs is a corrupt frame.
    if type(value) is not int or not minimum <= value <= MAX_WIRE_INT:
        raise WireError(f"{name} must be an integer in [{minimum}, 2**63)")
    return value


def _check_bytes(value: Any, name: str) -> bytes:
    if not isinstance(value, (bytes, bytearray)):
        raise WireError(f"{name} must be bytes")
    return value
