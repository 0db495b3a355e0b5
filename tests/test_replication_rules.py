"""The leader's replication rules (broker/replication/leader_state.py), with injected time.

Each scenario pins one rule by name; the Hypothesis test drives random fetches, appends, time,
shrinks and controller commits and checks the invariants after every step.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.replication import IsrProposal, LeaderPartitionState, Outcome

pytestmark = pytest.mark.timeout(60)

LAG_MS = 10_000
LEADER, F1, F2 = 1, 2, 3
EPOCH = 5


def state(isr=(LEADER, F1, F2), leo=10, hw=10, min_insync=2, now_ms=0, **kw) -> LeaderPartitionState:
    return LeaderPartitionState(
        replicas=[LEADER, F1, F2], isr=list(isr), leader_id=LEADER, leader_epoch=EPOCH,
        leader_log_end_offset=leo, high_watermark=hw, replica_lag_time_max_ms=LAG_MS,
        min_insync_replicas=min_insync, now_ms=now_ms, **kw,
    )


# --- high watermark -----------------------------------------------------------------------------

def test_high_watermark_is_min_log_end_offset_over_isr():
    s = state()
    assert not s.on_leader_append(20).high_watermark_moved  # followers' LEOs are unknown yet
    s.on_follower_fetch(F1, 15, EPOCH, 1)
    assert s.high_watermark == 10  # F2 not heard from: the HW holds
    changes = s.on_follower_fetch(F2, 12, EPOCH, 2)
    assert changes.high_watermark_moved and changes.high_watermark == 12
    s.on_follower_fetch(F2, 20, EPOCH, 3)
    assert s.high_watermark == 15


def test_high_watermark_never_decreases():
    s = state()
    s.on_leader_append(20)
    s.on_follower_fetch(F1, 18, EPOCH, 1)
    s.on_follower_fetch(F2, 18, EPOCH, 1)
    assert s.high_watermark == 18
    s.on_follower_fetch(F1, 12, EPOCH, 2)  # a follower reports less (it restarted and lost data)
    assert s.high_watermark == 18


def test_single_member_isr_moves_with_leader_appends():
    s = state(isr=(LEADER,), min_insync=1)
    changes = s.on_leader_append(14)
    assert changes.high_watermark_moved and s.high_watermark == 14


def test_leader_log_end_offset_never_goes_back():
    with pytest.raises(ValueError):
        state().on_leader_append(9)


def test_fetch_beyond_leader_log_end_offset_is_refused():
    with pytest.raises(ValueError):
        state().on_follower_fetch(F1, 11, EPOCH, 1)


# --- caught-up rule and shrink ------------------------------------------------------------------

def test_slow_follower_is_dropped_after_lag_time_and_only_then():
    s = state()
    s.on_leader_append(20)
    s.on_follower_fetch(F1, 20, EPOCH, 0)  # caught up at 0
    s.on_follower_fetch(F2, 20, EPOCH, 0)
    s.on_leader_append(30)
    s.on_follower_fetch(F1, 30, EPOCH, 5_000)  # F1 keeps up; F2 goes silent
    assert s.maybe_shrink_isr(LAG_MS) is None  # exactly the lag max: still in sync
    proposal = s.maybe_shrink_isr(LAG_MS + 1)
    assert proposal == IsrProposal(LEADER, EPOCH, None, (LEADER, F1), removed=(F2,))


def test_follower_level_with_an_idle_leader_is_never_dropped():
    s = state()
    s.on_follower_fetch(F1, 10, EPOCH, 0)
    s.on_follower_fetch(F2, 10, EPOCH, 0)
    assert s.maybe_shrink_isr(10 * LAG_MS) is None


def test_follower_behind_under_steady_load_counts_from_its_previous_fetch():
    """The second arm: a fetch that covers the leader's LEO at the previous fetch is caught up then."""
    s = state(isr=(LEADER, F1, F2))
    s.on_follower_fetch(F2, 10, EPOCH, 0)
    t_ms = 0
    for leo in range(20, 200, 10):  # the leader always appends before the follower's next fetch
        s.on_leader_append(leo)
        t_ms += 4_000
        s.on_follower_fetch(F1, leo - 10, EPOCH, t_ms)  # never level with the current LEO
    assert s.followers[F1].last_caught_up_ms == t_ms - 4_000
    assert s.maybe_shrink_isr(t_ms + 1) == IsrProposal(LEADER, EPOCH, None, (LEADER, F1), removed=(F2,))


def test_follower_falling_behind_its_previous_fetch_is_not_caught_up():
    s = state()
    s.on_leader_append(20)
    s.on_follower_fetch(F1, 20, EPOCH, 0)
    s.on_follower_fetch(F2, 20, EPOCH, 0)
    s.on_leader_append(30)
    s.on_follower_fetch(F2, 20, EPOCH, 1_000)  # leader LEO at previous fetch was 20: caught up at 0
    s.on_leader_append(40)
    s.on_follower_fetch(F2, 25, EPOCH, 2_000)  # 25 < 30: not caught up as of 1_000
    s.on_follower_fetch(F1, 40, EPOCH, 2_000)
    assert s.followers[F2].last_caught_up_ms == 0
    assert s.maybe_shrink_isr(LAG_MS + 1).removed == (F2,)


def test_leader_is_never_proposed_for_removal():
    s = state(isr=(LEADER,), min_insync=1)
    s.on_leader_append(20)
    assert s.maybe_shrink_isr(100 * LAG_MS) is None


def test_isr_member_that_lost_acknowledged_records_is_proposed_for_removal():
    s = state()
    s.on_follower_fetch(F1, 10, EPOCH, 0)
    s.on_follower_fetch(F2, 10, EPOCH, 0)
    s.on_follower_fetch(F2, 4, EPOCH, 1)  # below the HW of 10
    assert s.maybe_shrink_isr(1).removed == (F2,)


# --- expansion ----------------------------------------------------------------------------------

def test_follower_is_proposed_for_reentry_only_after_reaching_high_watermark():
    s = state(isr=(LEADER, F1))
    s.on_leader_append(20)
    s.on_follower_fetch(F1, 18, EPOCH, 1)
    assert s.high_watermark == 18
    assert s.on_follower_fetch(F2, 17, EPOCH, 2).isr_proposal is None
    proposal = s.on_follower_fetch(F2, 18, EPOCH, 3).isr_proposal
    assert proposal == IsrProposal(LEADER, EPOCH, None, (LEADER, F1, F2), added=(F2,))


def test_reentry_needs_the_current_leader_epoch():
    s = state(isr=(LEADER, F1))
    s.on_follower_fetch(F1, 10, EPOCH, 1)
    stale = s.on_follower_fetch(F2, 10, EPOCH - 1, 2)
    assert stale.outcome is Outcome.STALE_EPOCH and stale.isr_proposal is None
    assert s.followers[F2].log_end_offset is None  # an old-epoch fetch is not evidence
    assert s.on_follower_fetch(F2, 10, EPOCH + 1, 2).outcome is Outcome.NEWER_EPOCH
    assert s.on_follower_fetch(F2, 10, EPOCH, 3).isr_proposal.added == (F2,)


def test_reentry_needs_the_start_of_this_leader_epoch():
    s = state(isr=(LEADER, F1), leo=20, hw=10)  # elected with an uncommitted tail 10..20
    s.on_follower_fetch(F1, 12, EPOCH, 1)
    assert s.on_follower_fetch(F2, 15, EPOCH, 2).isr_proposal is None  # >= HW, < epoch start
    assert s.on_follower_fetch(F2, 20, EPOCH, 3).isr_proposal.added == (F2,)


def test_unknown_follower_is_refused():
    assert state().on_follower_fetch(99, 0, EPOCH, 0).outcome is Outcome.NOT_A_REPLICA


# --- pending changes are not acted on -----------------------------------------------------------

def test_pending_expansion_is_not_counted_for_min_insync_and_holds_back_the_hw():
    s = state(isr=(LEADER, F1), min_insync=3)
    s.on_follower_fetch(F1, 10, EPOCH, 0)
    proposal = s.on_follower_fetch(F2, 10, EPOCH, 1).isr_proposal
    assert proposal is not None and s.isr == [LEADER, F1]
    assert not s.can_accept_acks_all()
    s.on_leader_append(30)
    s.on_follower_fetch(F1, 30, EPOCH, 2)
    # Committed ISR alone would give 30; the proposed member may be elected once committed.
    assert s.high_watermark == 10
    s.on_follower_fetch(F2, 25, EPOCH, 3)
    assert s.high_watermark == 25
    assert s.on_isr_committed([LEADER, F1, F2], EPOCH).outcome is Outcome.APPLIED
    assert s.can_accept_acks_all() and s.pending is None
    assert s.high_watermark <= min(s.followers[F1].log_end_offset, s.followers[F2].log_end_offset)


def test_pending_shrink_keeps_counting_the_leaving_member():
    s = state()
    s.on_leader_append(20)
    s.on_follower_fetch(F1, 20, EPOCH, 0)
    s.on_follower_fetch(F2, 12, EPOCH, 0)
    s.on_leader_append(30)
    s.on_follower_fetch(F1, 30, EPOCH, LAG_MS)
    proposal = s.maybe_shrink_isr(LAG_MS + 1)
    assert proposal.removed == (F2,)
    assert s.isr == [LEADER, F1, F2] and s.high_watermark == 12  # F2 still holds it
    assert s.maybe_shrink_isr(LAG_MS + 2) is None  # one proposal in flight
    changes = s.on_isr_committed([LEADER, F1], EPOCH)
    assert changes.high_watermark_moved and s.high_watermark == 30


def test_failed_proposal_can_be_retried():
    s = state()
    s.on_leader_append(20)
    proposal = s.maybe_shrink_isr(LAG_MS + 1)
    assert proposal.removed == (F1, F2)
    s.on_isr_proposal_failed(proposal)
    assert s.pending is None and s.maybe_shrink_isr(LAG_MS + 2) == proposal


def test_stale_commits_are_ignored():
    s = state(partition_epoch=7)
    assert s.on_isr_committed([LEADER], EPOCH - 1).outcome is Outcome.STALE_EPOCH
    assert s.on_isr_committed([LEADER], EPOCH, partition_epoch=7).outcome is Outcome.STALE_EPOCH
    assert s.on_isr_committed([LEADER], EPOCH + 1).outcome is Outcome.NEWER_EPOCH
    assert s.isr == [LEADER, F1, F2]
    assert s.on_isr_committed([LEADER, F1], EPOCH, partition_epoch=8).outcome is Outcome.APPLIED
    assert s.isr == [LEADER, F1] and s.partition_epoch == 8


def test_commit_without_the_leader_is_refused():
    with pytest.raises(ValueError):
        state().on_isr_committed([F1, F2], EPOCH)


# --- acks=all -------------------------------------------------------------------------------------

def test_min_insync_refusal():
    s = state(isr=(LEADER, F1), min_insync=3)
    assert not s.can_accept_acks_all()
    s.on_isr_committed([LEADER, F1, F2], EPOCH)
    assert s.can_accept_acks_all()
    s.on_isr_committed([LEADER, F2], EPOCH)
    assert not s.can_accept_acks_all()


def test_acks_all_satisfied_once_high_watermark_reaches_end_offset():
    s = state(isr=(LEADER, F1))
    s.on_leader_append(15)
    assert not s.acks_all_satisfied(15)
    s.on_follower_fetch(F1, 14, EPOCH, 1)
    assert s.acks_all_satisfied(14) and not s.acks_all_satisfied(15)
    s.on_follower_fetch(F1, 15, EPOCH, 2)
    assert s.acks_all_satisfied(15)


# --- invariants under random inputs ---------------------------------------------------------------

FOLLOWERS = (F1, F2)
step = st.one_of(
    st.tuples(st.just("append"), st.integers(0, 5)),
    st.tuples(st.just("fetch"), st.sampled_from(FOLLOWERS), st.integers(0, 8), st.integers(0, 9)),  # 0: stale epoch
    st.tuples(st.just("tick"), st.integers(0, 2 * LAG_MS)),
    st.tuples(st.just("shrink")),
    st.tuples(st.just("commit_pending")),
    st.tuples(st.just("fail_pending")),
    st.tuples(st.just("fence"), st.sampled_from(FOLLOWERS)),
    st.tuples(st.just("stale_commit")),
)


@settings(max_examples=500, deadline=None)
@given(
    start_leo=st.integers(0, 10), hw_behind=st.integers(0, 5),
    in_isr=st.lists(st.booleans(), min_size=2, max_size=2), steps=st.lists(step, min_size=20, max_size=80),
)
def test_random_inputs_keep_the_invariants(start_leo, hw_behind, in_isr, steps):
    hw = max(0, start_leo - hw_behind)
    isr = [LEADER] + [f for f, member in zip(FOLLOWERS, in_isr) if member]
    s = state(isr=isr, leo=start_leo, hw=hw, min_insync=1)
    # The followers' real logs: ISR members hold at least the HW, and only ever grow here.
    real_leo = {f: (hw if f in isr else 0) for f in FOLLOWERS}
    now_ms = 0
    for action, *args in steps:
        previous_hw = s.high_watermark
        if action == "append":
            s.on_leader_append(s.leader_log_end_offset + args[0])
        elif action == "fetch":
            follower, grow, epoch_roll = args
            epoch = EPOCH - 1 if epoch_roll == 0 else EPOCH
            s.on_follower_fetch(follower, real_leo[follower], epoch, now_ms)
            real_leo[follower] = min(s.leader_log_end_offset, real_leo[follower] + grow)
        elif action == "tick":
            now_ms += args[0]
        elif action == "shrink":
            s.maybe_shrink_isr(now_ms)
        elif action == "commit_pending" and s.pending is not None:
            s.on_isr_committed(list(s.pending.isr), EPOCH)
        elif action == "fail_pending" and s.pending is not None:
            s.on_isr_proposal_failed(s.pending)
        elif action == "fence" and args[0] in s.isr:
            s.on_isr_committed([r for r in s.isr if r != args[0]], EPOCH)  # the controller's own shrink
        elif action == "stale_commit":
            before = s.isr
            assert s.on_isr_committed([LEADER], EPOCH - 1).outcome is Outcome.STALE_EPOCH
            assert s.isr == before
        assert s.high_watermark >= previous_hw, "HW is monotonic"
        assert s.high_watermark <= s.leader_log_end_offset, "HW never passes the leader's LEO"
        assert LEADER in s.isr, "the leader is always in its ISR"
        for member in s.isr:
            if member != LEADER:
                assert s.high_watermark <= real_leo[member], "every committed ISR member holds the HW"
