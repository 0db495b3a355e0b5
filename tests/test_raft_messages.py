"""Raft messages on the wire: round trips through msgpack, and bad input only ever raises
WireError (a ValueError), whole, mangled or random."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.raft import Entry, EntryKind, WireError, message_from_wire
from broker.raft.messages import (
    AppendEntries, AppendResp, Heartbeat, HeartbeatResp, InstallSnapshot, PreVote, PreVoteResp,
    SnapshotResp, Vote, VoteResp,
)

pytestmark = pytest.mark.timeout(60)

EXAMPLES = [
    PreVote(1, 2, 5, 10, 4),
    PreVoteResp(2, 1, 5, True),
    Vote(1, 2, 5, 10, 4),
    VoteResp(2, 1, 5, False),
    AppendEntries(1, 2, 5, 3, 2, (Entry(2, 4, EntryKind.NORMAL, b"a"), Entry(5, 5, EntryKind.NOOP, b"")), 3),
    AppendEntries(1, 2, 5, 3, 2, (), 3),
    AppendResp(2, 1, 5, False, 3, 2, 1),
    Heartbeat(1, 2, 5, 3, b"ctx"),
    HeartbeatResp(2, 1, 5, b""),
    InstallSnapshot(1, 2, 5, 100, 4, b"\x00state"),
    SnapshotResp(2, 1, 5, 100),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_through_msgpack(message):
    wire = msgpack.unpackb(msgpack.packb(message.to_wire()))
    assert message_from_wire(wire) == message


@pytest.mark.parametrize("wire, reason", [
    ("not a list", "must be a list"),
    ([99, 1, 2, 3], "unknown message type"),
    ([1, 1, 2, 3, 10], "needs 6 items"),
    ([1, 0, 2, 3, 10, 4], "from_id"),
    ([1, 1, 2, -1, 10, 4], "term"),
    ([1, 1, 2, 3, True, 4], "last_log_index"),
    ([2, 1, 2, 3, 1], "granted must be a bool"),
    ([7, 1, 2, 3, 0, "ctx"], "read_ctx must be bytes"),
    ([5, 1, 2, 3, 0, 0, [[1, 2, 0, b""]], 0], "breaks the run"),
    ([5, 1, 2, 3, 0, 0, [[4, 1, 0, b""]], 0], "outside"),
    ([5, 1, 2, 3, 0, 0, [[1, 1, 7, b""]], 0], "kind"),
    ([5, 1, 2, 3, 0, 0, [[1, 1, 0]], 0], "entry must be"),
    ([9, 1, 2, 3, 0, 0, b""], "snapshot index"),
    ([1, 1, 2, 1 << 64, 10, 4], "term"),
])
def test_bad_shapes_raise_wire_error(wire, reason):
    with pytest.raises(WireError, match=reason):
        message_from_wire(wire)


def test_wire_error_is_a_value_error():
    assert issubclass(WireError, ValueError)


wire_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(1 << 64), max_value=1 << 64) | st.binary(max_size=8)
    | st.text(max_size=4) | st.floats(allow_nan=False),
    lambda children: st.lists(children, max_size=8),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(wire_values)
def test_arbitrary_input_only_raises_wire_error(obj):
    try:
        message_from_wire(obj)
    except WireError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(EXAMPLES), st.integers(min_value=0, max_value=10), wire_values)
def test_mangled_messages_only_raise_wire_error(message, position, replacement):
    wire = message.to_wire()
    wire[position % len(wire)] = replacement
    try:
        decoded = message_from_wire(wire)
    except WireError:
        return
    assert message_from_wire(decoded.to_wire()) == decoded
