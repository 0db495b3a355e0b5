"""Partition replication under process and network faults (issue #5), on real broker processes.

Three brokers behind the fault proxy (tests/faults/harness.py), one topic with 3 partitions,
RF=3, min.insync.replicas=2, and two producers sending with acks=all throughout. Each test
injects one kind of fault, lets the cluster heal, and then checks what was acknowledged:

1. kill -9 of a partition's leader, then its restart, in three rounds (a different partition
   each time): a new leader with a higher epoch, writes going on through it, the old leader
   back in the ISR after its restart;
2. kill -9 of a follower, then its restart, twice: writes never stop, the follower leaves the
   ISR and comes back;
3. SIGSTOP of a leader past broker_session_timeout_ms, twice: another leader with a higher
   epoch; then SIGCONT, with acks=all produce requests queued in the old leader's sockets (sent
   straight to its port once it was replaced): it must not acknowledge any write as leader
   once replaced, so no two values are ever acknowledged at one (partition, offset), and any
   write it did acknowledge is checked like the producers' ones;
4. the leader cut off the network both ways (at the proxy: its route and its own connections
   to the others), then healed, twice: once silently (blackhole: held requests are delivered
   late, as after a real partition heals) and once with every connection reset (cut).

After the faults: every partition has all replicas in sync, the producers stop, and then
`check_log` (every acknowledged value at its acknowledged offset, no two values acknowledged at
one offset, contiguous offsets, each producer's per-partition order) and, with the brokers
stopped, `check_replicas` (every replica byte-identical up to the high watermark). A last test
checks the checks: clean on an unfaulted run, and each kind of damage reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from tests.faults.harness import (
    Ack,
    FaultCluster,
    ProducerWorkload,
    RawProduce,
    acknowledged_collisions,
    check_log,
    check_replicas,
)
from tests.faults.proxy import Mode

TOPIC = "faults"
PARTITIONS = 3
FAILOVER_S = 10.0  # a fault -> another leader (session timeout 1.5 s, measured well under this)
PROGRESS_ACKS = 30  # acknowledgements on the faulted partition that show writes go on
HEAL_S = 20.0  # a restart or heal -> every replica in sync again
STALE_WRITES = 3  # acks=all requests queued at a paused leader after its replacement


@pytest.fixture
def cluster(tmp_path):
    with FaultCluster(tmp_path) as started:
        started.create_topic(TOPIC, partitions=PARTITIONS, replication_factor=3)
        yield started


@contextlib.contextmanager
def producing(cluster: FaultCluster):
    """Producers running throughout the block; when it ends, the heal-time checks (`finish`).
    When the block fails, the failure also carries what the log check finds at that moment,
    which tells a heal that did not come from lost or doubly acknowledged records."""
    work = ProducerWorkload(cluster.bootstrap_servers, TOPIC, PARTITIONS).start()
    try:
        yield work
    except AssertionError as failure:
        failure.add_note(diagnose(cluster, work))
        raise
    finally:
        if not work.stopped:
            work.stop()
    finish(cluster, work)


def diagnose(cluster: FaultCluster, work: ProducerWorkload) -> str:
    """Best effort after a failure: stop the producers, read what the cluster holds."""
    lines = ["--- at the failure ---"]
    try:
        work.stop()
        lines.append(f"workload: {work.summary()}")
        for node_id in list(cluster.isolated):
            cluster.heal(node_id)
        for node_id, node in cluster.nodes.items():
            if node.paused:
                cluster.resume(node_id)
        lines.append(f"partitions: {cluster.describe(TOPIC)}")
        report = check_log(cluster.bootstrap_servers, TOPIC, PARTITIONS, work.acks, timeout_s=10)
        lines += report.problems[:15] + report.notes
    except Exception as exc:  # diagnostics must not hide the failure
        lines.append(f"(diagnostics stopped: {type(exc).__name__}: {exc})")
    return "\n".join(lines)


def finish(cluster: FaultCluster, work: ProducerWorkload) -> None:
    """Heal-time checks: all replicas in sync, then (producers stopped) the log and replica checks."""
    final = cluster.wait_for_full_isr(TOPIC, HEAL_S)
    print(f"\nworkload: {work.summary()}")
    assert work.ack_count() > 0, f"nothing was acknowledged: {work.summary()}; {work.failures[:5]}"
    log_report = check_log(cluster.bootstrap_servers, TOPIC, PARTITIONS, work.acks)
    statuses = cluster.stop_gracefully()
    replica_report = check_replicas(
        cluster, TOPIC, log_report.end_offsets, {p.partition: p.replicas for p in final}
    )
    print("\n".join(log_report.notes + replica_report.notes))
    problems = log_report.problems + replica_report.problems
    if problems:
        log_report.problems = problems
        log_report.notes.append(f"workload: {work.summary()}")
        log_report.notes.append(f"broker exit statuses: {statuses}")
        log_report.raise_if_failed()


@pytest.mark.timeout(120)
def test_kill9_of_the_leader_then_restart_in_rounds_loses_no_acknowledged_write(cluster):
    with producing(cluster) as work:
        work.wait_for_acks(100)
        for round_ in range(3):
            partition = round_ % PARTITIONS
            old = cluster.leader_of(TOPIC, partition)
            cluster.kill9(old.leader)
            new = cluster.wait_for_new_leader(TOPIC, partition, old, FAILOVER_S)
            print(f"\nround {round_}: p{partition} leader {old.leader} (epoch {old.leader_epoch}) killed, "
                  f"now led by {new.leader} (epoch {new.leader_epoch}), isr {new.isr}")
            work.wait_for_acks(PROGRESS_ACKS, partition=partition)
            cluster.restart(old.leader)
            cluster.wait_for_full_isr(TOPIC, HEAL_S)
            work.wait_for_acks(PROGRESS_ACKS, partition=partition)


@pytest.mark.timeout(120)
def test_kill9_of_a_follower_then_restart_keeps_writes_going_and_loses_nothing(cluster):
    with producing(cluster) as work:
        work.wait_for_acks(100)
        for round_ in range(2):
            led = cluster.leader_of(TOPIC, 0)
            follower = [n for n in led.replicas if n != led.leader][round_ % 2]
            cluster.kill9(follower)
            # min.insync.replicas=2 still holds with one follower down: p0 keeps its leader and
            # goes on acknowledging; the dead follower leaves the ISR.
            work.wait_for_acks(PROGRESS_ACKS, partition=0)
            shrunk = cluster.wait_for_partitions(
                TOPIC, lambda ps: follower not in ps[0].isr, FAILOVER_S, f"follower {follower} out of p0's ISR"
            )
            assert shrunk[0].leader == led.leader, f"p0 changed leader on a follower's crash: {shrunk[0]}"
            work.wait_for_acks(PROGRESS_ACKS, partition=0)
            cluster.restart(follower)
            cluster.wait_for_full_isr(TOPIC, HEAL_S)
            work.wait_for_acks(PROGRESS_ACKS, partition=0)


@pytest.mark.timeout(120)
def test_a_paused_leader_replaced_past_its_session_acknowledges_nothing_after_it_resumes(cluster):
    session_s = cluster.settings["broker_session_timeout_ms"] / 1000
    with producing(cluster) as work:
        work.wait_for_acks(100)
        for round_ in range(2):
            partition = round_ % PARTITIONS
            old = cluster.leader_of(TOPIC, partition)
            cluster.pause(old.leader)
            try:
                new = cluster.wait_for_new_leader(TOPIC, partition, old, FAILOVER_S + session_s)
                print(f"\nround {round_}: p{partition} leader {old.leader} (epoch {old.leader_epoch}) paused, "
                      f"now led by {new.leader} (epoch {new.leader_epoch}), isr {new.isr}")
                assert old.leader not in new.isr, f"the paused leader is still in the ISR: {new}"
                work.wait_for_acks(PROGRESS_ACKS, partition=partition)  # through the new leader
                # Writes sent to the replaced leader itself, waiting in its socket buffers.
                port = cluster.nodes[old.leader].port
                stale = [RawProduce(port, TOPIC, partition, b"stale-%d-%d" % (round_, i)) for i in range(STALE_WRITES)]
            finally:
                cluster.resume(old.leader)
            # It wakes up with a stale view of the cluster and these requests to handle first.
            resumed = time.monotonic()
            answers = [write.result() for write in stale]
            print(f"stale writes to the resumed old leader answered in {time.monotonic() - resumed:.2f} s: "
                  f"{[a.error_code if a is not None else 'no answer' for a in answers]}")
            for index, (write, answer) in enumerate(zip(stale, answers)):
                if answer is not None and answer.error_code == 0:  # acknowledged: it must be in the log there
                    work.add_ack(Ack(partition, answer.base_offset, write.value, -1 - round_, index))
            work.wait_for_acks(PROGRESS_ACKS, partition=partition)
            collisions = acknowledged_collisions(work.acks)
            assert not collisions, (
                f"two values acknowledged at one offset (an old leader acknowledged after its replacement): "
                f"{dict(list(collisions.items())[:5])}"
            )
            cluster.wait_for_full_isr(TOPIC, HEAL_S)
            work.wait_for_acks(PROGRESS_ACKS, partition=partition)


@pytest.mark.timeout(120)
def test_a_leader_cut_off_the_network_is_replaced_and_rejoins_after_the_heal(cluster):
    with producing(cluster) as work:
        work.wait_for_acks(100)
        # Round 0 drops the leader's traffic silently (blackhole: held bytes arrive late after the
        # heal); round 1 rejects it (cut: every connection reset, like a firewall's REJECT).
        for round_, mode in enumerate((Mode.BLACKHOLE, Mode.CUT)):
            partition = round_ % PARTITIONS
            old = cluster.leader_of(TOPIC, partition)
            # Isolation must be both ways: the proxy must know the leader's own connections.
            assert cluster.outgoing_connections(old.leader) > 0, "no connection of the leader was labelled"
            cluster.isolate(old.leader, mode)
            try:
                new = cluster.wait_for_new_leader(TOPIC, partition, old, FAILOVER_S)
                print(f"\nround {round_}: p{partition} leader {old.leader} (epoch {old.leader_epoch}) isolated "
                      f"({mode.name}), now led by {new.leader} (epoch {new.leader_epoch}), isr {new.isr}")
                work.wait_for_acks(PROGRESS_ACKS, partition=partition)
            finally:
                cluster.heal(old.leader)
            work.wait_for_acks(PROGRESS_ACKS, partition=partition)
            cluster.wait_for_full_isr(TOPIC, HEAL_S)
            work.wait_for_acks(PROGRESS_ACKS, partition=partition)


@pytest.mark.timeout(60)
def test_the_checks_find_lost_misplaced_colliding_reordered_and_diverging_records(cluster):
    """The checker itself: clean on an unfaulted run, and each kind of damage is reported."""
    with ProducerWorkload(cluster.bootstrap_servers, TOPIC, PARTITIONS) as work:
        work.wait_for_acks(60)
    acks = list(work.acks)
    clean = check_log(cluster.bootstrap_servers, TOPIC, PARTITIONS, acks)
    assert not clean.problems, clean.problems
    end = clean.end_offsets

    first, second = sorted((a for a in acks if a.partition == 0 and a.producer == 0), key=lambda a: a.seq)[:2]
    doctored = acks + [
        Ack(1, 0, b"never-sent-here", 7, 0),  # a second value acknowledged at p1@0
        Ack(2, end[2] + 5, b"lost", 8, 0),  # acknowledged beyond the end: lost
        Ack(0, second.offset, first.value, 9, 1),  # a value at another offset than acknowledged
        first._replace(seq=second.seq + 1, producer=0),  # now sent after `second`, stored before it
    ]
    report = check_log(cluster.bootstrap_servers, TOPIC, PARTITIONS, doctored)
    text = "\n".join(report.problems)
    assert "p1@0: 2 different values acknowledged" in text, text
    assert f"p2@{end[2] + 5}: acknowledged b'lost', beyond the end offset" in text, text
    assert f"p0@{second.offset}: acknowledged {first.value[:24]!r}, holds" in text, text
    assert "producer 0 sent seq" in text, text
    # A value written twice (by a non-idempotent producer, so the broker cannot tell).
    asyncio.run(_send_plain(cluster.bootstrap_servers, first.value))
    twice = check_log(cluster.bootstrap_servers, TOPIC, PARTITIONS, acks)
    assert any("p0: 1 values stored more than once" in p for p in twice.problems), twice.problems

    final = cluster.wait_for_full_isr(TOPIC, HEAL_S)
    cluster.stop_gracefully()
    assert not check_replicas(cluster, TOPIC, end).problems
    # One follower's copy of p0 damaged in place (its clean-shutdown marker makes the next open
    # trust it, so no recovery hides the change), another's cut short.
    follower = [n for n in final[0].replicas if n != final[0].leader][0]
    segment = cluster.nodes[follower].data_dir / f"{TOPIC}-0" / "00000000000000000000.log"
    data = bytearray(segment.read_bytes())
    first_batch_end = int.from_bytes(data[8:12], "big") + 12  # batch_length counts from byte 12
    data[first_batch_end - 1] ^= 0xFF  # inside the first batch's records, never in a header
    segment.write_bytes(bytes(data))
    damaged = check_replicas(cluster, TOPIC, end)
    assert any(f"p0: broker {follower}'s log differs" in p for p in damaged.problems), damaged.problems
    short = check_replicas(cluster, TOPIC, {**end, 0: end[0] + 10})  # past what any replica holds
    assert any("holds offsets up to" in p for p in short.problems), short.problems


async def _send_plain(bootstrap_servers: str, value: bytes) -> None:
    from client import Producer

    async with Producer(bootstrap_servers, acks=1) as producer:
        await producer.send_and_wait(TOPIC, value, partition=0)
