"""Security end to end on brokers embedded in the test's loop: SCRAM-SHA-256 logins over
SaslHandshake/SaslAuthenticate, users and ACLs committed through the controller, TLS with and
without client certificates, and refusals that leave no trace in any log."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest

from broker.config import load_config
from broker.server import Broker, BrokerStartError
from client import Admin, Consumer, Producer, TopicPartition
from client.errors import (
    BrokerUnreachableError,
    ClusterAuthorizationFailedError,
    ConnectionClosedError,
    GroupAuthorizationFailedError,
    SaslAuthenticationFailedError,
    TidelogError,
    TopicAuthorizationFailedError,
)
from client.protocol import records as rec
from client.protocol.errors import ErrorCode, RequestRejectedError
from client.protocol.frames import NEED_DATA, FrameDecoder
from client.protocol.messages import ApiKey, MetadataRequest, decode_response
from client.security import AclBinding, AclFilter, create_ssl_context
from tests.brokerproc import encode, produce_request
from tests.pki import make_pki, needs_openssl

pytestmark = pytest.mark.timeout(60)

ADMIN = dict(sasl_plain_username="admin", sasl_plain_password="admin-secret")
SASL = dict(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256")


def make_broker(path, **settings) -> Broker:
    flags = {"listen": "127.0.0.1:0", "data_dir": str(path), **settings}
    return Broker(load_config(environ={}, flags=flags))


def bootstrap(broker: Broker) -> str:
    host, port = broker.bound_address
    return f"{host}:{port}"


def log_end_offsets(broker: Broker) -> dict[tuple[str, int], int]:
    """Every partition log this broker holds and where it ends: the 'trace' a refusal must not leave."""
    return {tp: state.log.log_end_offset for tp, state in broker.replicas.partitions.items()}


async def raw_call(address, request, **tls):
    """One request on a fresh unauthenticated socket: (the response or the error code it was
    refused with, whether the broker then closed the connection); (None, True) when the broker
    closed without answering."""
    reader, writer = await asyncio.open_connection(*address, **tls)
    try:
        writer.write(encode(request, 1))
        decoder = FrameDecoder(1 << 24, is_request=False)
        answer = None
        while answer is None:
            frame = decoder.next_frame()
            if frame is not NEED_DATA:
                try:
                    answer = decode_response(request.API_KEY, frame)
                except RequestRejectedError as exc:
                    answer = exc.error_code
                break
            data = await reader.read(65536)
            if not data:
                return None, True
            decoder.feed(data)
        return answer, await reader.read(1) == b""
    except (ConnectionResetError, ssl.SSLError):
        return None, True
    finally:
        writer.close()


@pytest.fixture
async def sasl_broker(tmp_path):
    broker = make_broker(tmp_path / "b1", security_protocol="SASL_PLAINTEXT", broker_username="admin",
                         broker_password="admin-secret", acls_enabled="true", auto_create_topics="true")
    await broker.start()
    try:
        async with Admin(bootstrap_servers=bootstrap(broker), **SASL, **ADMIN) as admin:
            await admin.create_topic("orders", partitions=2)
            await admin.create_user("alice", "alice-secret")
            await admin.create_user("bob", "bob-secret")
            await admin.create_acls([
                AclBinding("User:alice", "topic", "orders", "literal", "write", "allow"),
                AclBinding("User:alice", "topic", "ord", "prefixed", "read", "allow"),
                AclBinding("User:alice", "group", "billing", "literal", "read", "allow"),
                AclBinding("User:bob", "topic", "orders", "literal", "describe", "allow"),
            ])
        yield broker
    finally:
        await broker.stop()


async def test_the_allowed_user_produces_and_consumes_in_a_group(sasl_broker):
    servers = bootstrap(sasl_broker)
    alice = dict(**SASL, sasl_plain_username="alice", sasl_plain_password="alice-secret")
    async with Producer(bootstrap_servers=servers, acks="all", **alice) as producer:
        sent = [await producer.send_and_wait("orders", b"v%d" % i, key=b"k%d" % i) for i in range(10)]
    assert len(sent) == 10
    async with Consumer("orders", bootstrap_servers=servers, group_id="billing", auto_offset_reset="earliest",
                        **alice) as consumer:
        values = set()
        while len(values) < 10:
            for records in (await consumer.getmany(timeout_ms=2000)).values():
                values.update(r.value for r in records)
        await consumer.commit()
    assert values == {b"v%d" % i for i in range(10)}
    stats = sasl_broker.security.stats
    assert stats.authentications_succeeded >= 3 and stats.authentications_failed == 0


async def test_no_credentials_wrong_password_and_missing_acl_are_refused_and_leave_no_trace(sasl_broker):
    servers = bootstrap(sasl_broker)
    before = log_end_offsets(sasl_broker)
    topics_before = set(sasl_broker.metadata.image.topics)

    # No credentials: only ApiVersions is answered; anything else is refused and the connection closes.
    with pytest.raises(SaslAuthenticationFailedError, match="authenticate first"):
        async with Producer(bootstrap_servers=servers, request_timeout_ms=5000) as producer:
            await producer.send_and_wait("orders", b"anonymous")
    batch = rec.build_batch([(None, b"sneaky", 1_700_000_000_000, None)])
    answer, closed = await raw_call(sasl_broker.bound_address, produce_request("orders", 0, batch, acks=1))
    assert answer == ErrorCode.SASL_AUTHENTICATION_FAILED and closed
    answer, closed = await raw_call(sasl_broker.bound_address, produce_request("orders", 0, batch, acks=0))
    assert answer is None and closed  # acks=0 gets no answer, only the closed connection
    answer, closed = await raw_call(sasl_broker.bound_address, MetadataRequest(topics=["fresh"], allow_auto_topic_creation=True))
    assert answer == ErrorCode.SASL_AUTHENTICATION_FAILED and closed

    # A wrong password, and a user that does not exist, fail alike at the login.
    for user, password in (("alice", "not-her-password"), ("mallory", "whatever")):
        with pytest.raises(SaslAuthenticationFailedError, match="wrong user name or password"):
            async with Producer(bootstrap_servers=servers, **SASL, sasl_plain_username=user,
                                sasl_plain_password=password):
                pass

    # A valid user without the ACL: refused per resource, with the resource's error.
    bob = dict(**SASL, sasl_plain_username="bob", sasl_plain_password="bob-secret")
    async with Producer(bootstrap_servers=servers, request_timeout_ms=5000, **bob) as producer:
        with pytest.raises(TopicAuthorizationFailedError, match="User:bob is not allowed to write topic 'orders'"):
            await producer.send_and_wait("orders", b"from bob")
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait("bobs-new-topic", b"auto-created?")
    async with Consumer(bootstrap_servers=servers, request_timeout_ms=5000, auto_offset_reset="earliest",
                        **bob) as consumer:
        consumer.assign([TopicPartition("orders", 0)])
        with pytest.raises(TopicAuthorizationFailedError, match="read topic 'orders'"):
            await consumer.getmany(timeout_ms=3000)
    with pytest.raises(GroupAuthorizationFailedError):
        async with Consumer("orders", bootstrap_servers=servers, group_id="billing", request_timeout_ms=5000,
                            **bob) as consumer:
            await consumer.getmany(timeout_ms=3000)
    async with Admin(bootstrap_servers=servers, request_timeout_ms=5000, **bob) as admin:
        with pytest.raises(TopicAuthorizationFailedError):
            await admin.create_topic("bobs-topic")
        with pytest.raises(ClusterAuthorizationFailedError):
            await admin.create_user("bob2", "x" * 12)
        assert await admin.list_topics() == ["orders"]  # listings show only what bob may describe

    assert log_end_offsets(sasl_broker) == before  # nothing appended anywhere
    assert set(sasl_broker.metadata.image.topics) == topics_before  # nothing auto-created
    assert set(sasl_broker.metadata.image.scram_users) == {"alice", "bob"}
    stats = sasl_broker.security.stats
    assert stats.unauthenticated_refused >= 4 and stats.authentications_failed == 2
    assert stats.topic_denied >= 4 and stats.group_denied >= 1 and stats.cluster_denied >= 1


@needs_openssl
async def test_a_tls_only_listener_refuses_plaintext_and_serves_tls(tmp_path):
    pki = make_pki(tmp_path / "pki")
    broker = make_broker(tmp_path / "b1", security_protocol="SSL", ssl_certfile=pki.cert("broker"),
                         ssl_keyfile=pki.key("broker"))
    await broker.start()
    try:
        # Plaintext: the request is taken for a broken TLS hello; no tidelog answer ever comes.
        answer, closed = await raw_call(broker.bound_address, MetadataRequest(topics=None))
        assert answer is None and closed
        with pytest.raises((ConnectionClosedError, BrokerUnreachableError)):
            async with Admin(bootstrap_servers=bootstrap(broker), request_timeout_ms=2000) as admin:
                await admin.list_topics()
        # A client that does not trust the broker's CA refuses it.
        with pytest.raises(BrokerUnreachableError, match="TLS handshake failed"):
            async with Admin(bootstrap_servers=bootstrap(broker), request_timeout_ms=2000, security_protocol="SSL",
                             ssl_context=ssl.create_default_context()):
                pass
        tls = dict(security_protocol="SSL", ssl_context=create_ssl_context(cafile=pki.ca))
        async with Producer(bootstrap_servers=bootstrap(broker), **tls) as producer:
            meta = await producer.send_and_wait("over-tls", b"secret")
        async with Consumer(bootstrap_servers=bootstrap(broker), auto_offset_reset="earliest", **tls) as consumer:
            consumer.assign([TopicPartition("over-tls", meta.partition)])
            record = await consumer.getone()
        assert record.value == b"secret"
    finally:
        await broker.stop()


@needs_openssl
async def test_client_certificates_name_the_principal_for_acls(tmp_path):
    pki = make_pki(tmp_path / "pki")
    for name in ("alice", "admin", "eve"):
        pki.issue(name)
    broker = make_broker(tmp_path / "b1", security_protocol="SSL", ssl_certfile=pki.cert("broker"),
                         ssl_keyfile=pki.key("broker"), ssl_cafile=pki.ca, ssl_client_auth="required",
                         acls_enabled="true", super_users="User:admin,User:broker")

    def as_user(name: str | None) -> dict:
        if name is None:
            return dict(security_protocol="SSL", ssl_context=create_ssl_context(cafile=pki.ca))
        return dict(security_protocol="SSL", ssl_context=create_ssl_context(
            cafile=pki.ca, certfile=pki.cert(name), keyfile=pki.key(name)))

    await broker.start()
    try:
        servers = bootstrap(broker)
        async with Admin(bootstrap_servers=servers, **as_user("admin")) as admin:
            await admin.create_topic("payments")
            await admin.create_acls([AclBinding("User:alice", "topic", "payments", "literal", "all", "allow")])
            assert [a.principal for a in await admin.describe_acls(AclFilter(resource_type="topic"))] == ["User:alice"]
        before = log_end_offsets(broker)
        with pytest.raises((ConnectionClosedError, BrokerUnreachableError)):  # no certificate, no entry
            async with Producer(bootstrap_servers=servers, request_timeout_ms=3000, **as_user(None)) as producer:
                await producer.send_and_wait("payments", b"x")
        async with Producer(bootstrap_servers=servers, request_timeout_ms=3000, **as_user("eve")) as producer:
            with pytest.raises(TopicAuthorizationFailedError):
                await producer.send_and_wait("payments", b"x")
        assert log_end_offsets(broker) == before
        async with Producer(bootstrap_servers=servers, **as_user("alice")) as producer:
            await producer.send_and_wait("payments", b"from alice", partition=0)
        assert log_end_offsets(broker)[("payments", 0)] == before[("payments", 0)] + 1
    finally:
        await broker.stop()


@needs_openssl
async def test_a_three_broker_cluster_over_sasl_ssl_replicates_with_acls_on(tmp_path):
    """Brokers log in to each other (Raft, the controller channel, replica fetchers) with the
    broker credential over TLS; a topic of replication factor 3 is written with acks=all."""
    pki = make_pki(tmp_path / "pki")
    from broker.testing import free_ports

    ports = free_ports(3)
    voters = ",".join(f"{i + 1}@127.0.0.1:{port}" for i, port in enumerate(ports))
    common = dict(security_protocol="SASL_SSL", ssl_certfile=pki.cert("broker"), ssl_keyfile=pki.key("broker"),
                  ssl_cafile=pki.ca, broker_username="admin", broker_password="admin-secret", acls_enabled="true",
                  voters=voters, raft_tick_ms="20")
    brokers = [Broker(load_config(environ={}, flags=dict(common, node_id=str(i + 1), listen=f"127.0.0.1:{port}",
                                                         data_dir=str(tmp_path / f"b{i + 1}"))))
               for i, port in enumerate(ports)]
    await asyncio.gather(*(b.start() for b in brokers))
    try:
        servers = ",".join(f"127.0.0.1:{port}" for port in ports)
        tls = dict(security_protocol="SASL_SSL", ssl_context=create_ssl_context(cafile=pki.ca))
        async with Admin(bootstrap_servers=servers, request_timeout_ms=20_000, **tls, **ADMIN) as admin:
            deadline = asyncio.get_running_loop().time() + 15
            while len([b for b in (await admin.describe_cluster()).brokers if not b.fenced]) < 3:
                assert asyncio.get_running_loop().time() < deadline, "brokers did not register over SASL_SSL"
                await asyncio.sleep(0.05)
            await admin.create_topic("ledger", partitions=1, replication_factor=3)
            await admin.create_user("alice", "alice-secret")
            await admin.create_acls([AclBinding("User:alice", "topic", "ledger", "literal", "write", "allow"),
                                     AclBinding("User:alice", "topic", "ledger", "literal", "read", "allow")])
        alice = dict(**tls, sasl_plain_username="alice", sasl_plain_password="alice-secret")
        async with Producer(bootstrap_servers=servers, acks="all", request_timeout_ms=20_000, **alice) as producer:
            meta = await producer.send_and_wait("ledger", b"replicated")
        async with Consumer(bootstrap_servers=servers, auto_offset_reset="earliest", **alice) as consumer:
            consumer.assign([TopicPartition("ledger", 0)])
            assert (await consumer.getone()).value == b"replicated"
        for broker in brokers:  # every broker learned the user through the metadata log
            assert "alice" in broker.metadata.image.scram_users
        assert meta.offset == 0
    finally:
        await asyncio.gather(*(b.stop() for b in brokers))
