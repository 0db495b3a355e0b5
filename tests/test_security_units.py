"""Security pieces without a network: SCRAM against RFC 7677's example, the authorizer's rules,
quota parsing, the metadata records of users and ACLs, start-up refusals, and the CLI."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest

from broker.config import load_config
from broker.metadata import MetadataImage
from broker.security.acls import Authorizer
from broker.security.quotas import Quota, QuotaManager, parse_quota_overrides
from broker.server import Broker, BrokerStartError
from client.protocol.scram import ScramClient, ScramError, ScramServer, make_credential
from tests.brokerproc import REPO_ROOT

pytestmark = pytest.mark.timeout(30)

# RFC 7677 section 3: user "user", password "pencil".
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
RFC_CLIENT_FINAL = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
RFC_SERVER_FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_the_client_reproduces_rfc_7677_and_the_server_checks_it():
    client = ScramClient("user", "pencil", nonce=RFC_CLIENT_NONCE)
    assert client.first() == "n,,n=user,r=" + RFC_CLIENT_NONCE
    assert client.final(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    client.verify(RFC_SERVER_FINAL)
    import base64

    credential = make_credential("pencil", salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), iterations=4096)
    server = ScramServer(lambda user: credential if user == "user" else None, nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    assert server.first(client.first()) == RFC_SERVER_FIRST
    assert server.final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL


def _login(user: str, password: str, stored: dict) -> str:
    client, server = ScramClient(user, password), ScramServer(stored.get)
    reply = server.final(client.final(server.first(client.first())))
    client.verify(reply)
    return server.username


def test_wrong_passwords_and_unknown_users_fail_alike_and_the_credential_holds_no_password():
    credential = make_credential("correct horse")
    stored = {"alice": credential, "o=dd,name": make_credential("x" * 8)}
    assert _login("alice", "correct horse", stored) == "alice"
    assert _login("o=dd,name", "x" * 8, stored) == "o=dd,name"  # escaped in the SCRAM messages
    for user, password in (("alice", "wrong"), ("nobody", "correct horse")):
        with pytest.raises(ScramError, match="^wrong user name or password$"):
            _login(user, password, stored)
    assert b"correct horse" not in repr(credential).encode()
    with pytest.raises(ScramError, match="iterations"):
        make_credential("x", iterations=1000)


def test_a_server_that_lacks_the_credential_cannot_fool_the_client():
    client = ScramClient("alice", "secret")
    impostor = ScramServer(lambda user: make_credential("another password"))
    final = client.final(impostor.first(client.first()))
    with pytest.raises(ScramError):
        impostor.final(final)  # the impostor cannot even check the proof
    with pytest.raises(ScramError, match="signature"):
        client.verify("v=" + "A" * 44)


def test_authorizer_deny_wins_prefixes_match_and_read_implies_describe():
    acls = {
        ("User:alice", "topic", "orders", "literal", "read", "allow", "*"),
        ("User:alice", "topic", "pay", "prefixed", "all", "allow", "*"),
        ("User:alice", "topic", "payroll", "literal", "write", "deny", "*"),
        ("User:*", "group", "*", "literal", "describe", "allow", "*"),
    }
    authorizer = Authorizer({"User:root"})
    authorizer.refresh(acls, 1)
    allowed = authorizer.allowed
    assert allowed("User:alice", "topic", "orders", "read") and allowed("User:alice", "topic", "orders", "describe")
    assert not allowed("User:alice", "topic", "orders", "write")
    assert allowed("User:alice", "topic", "payments", "write") and allowed("User:alice", "topic", "payroll", "read")
    assert not allowed("User:alice", "topic", "payroll", "write")  # deny wins over the prefixed allow
    assert allowed("User:bob", "group", "anything", "describe") and not allowed("User:bob", "group", "g", "read")
    assert not allowed("User:bob", "topic", "orders", "read")  # nothing matches: denied
    assert allowed("User:root", "cluster", "cluster", "alter")  # super user
    authorizer.refresh(set(), 2)  # a change of ACLs drops cached decisions
    assert not allowed("User:alice", "topic", "orders", "read")


def test_quota_overrides_parse_and_a_steady_stream_is_paced_at_the_rate():
    overrides = parse_quota_overrides("User:alice=produce:1000/fetch:2000,User:bob=fetch:5")
    assert overrides == {"User:alice": Quota(1000, 2000), "User:bob": Quota(0, 5)}
    for bad in ("alice=produce:1", "User:alice=produce:x", "User:alice=send:1"):
        with pytest.raises(ValueError):
            parse_quota_overrides(bad)
    quotas = QuotaManager(Quota(0, 0), overrides, frozenset({"User:root"}))
    now, answered = 100.0, 0.0
    for _ in range(100):  # 100 requests of 100 bytes at 1000 B/s: the last answer at 10 s
        answered = now + quotas.record("User:alice", "produce", 100, now)
        now = answered  # the client sends its next request when the answer comes
    assert answered == pytest.approx(110.0, abs=0.11)
    assert quotas.record("User:root", "produce", 10**9, now) == 0.0
    assert quotas.record("User:carol", "produce", 10**9, now) == 0.0  # no default quota


def test_users_and_acls_are_records_that_survive_a_snapshot():
    image = MetadataImage("c1")
    image.apply(["scram_user", "alice", "SCRAM-SHA-256", 8192, b"s" * 16, b"k" * 32, b"v" * 32])
    image.apply(["scram_user", "bob", "SCRAM-SHA-256", 4096, b"t" * 16, b"l" * 32, b"w" * 32])
    image.apply(["delete_scram_user", "bob", "SCRAM-SHA-256"])
    acl = ["User:alice", "topic", "orders", "literal", "read", "allow", "*"]
    image.apply(["acl", *acl])
    image.apply(["acl", "User:x", "group", "g", "literal", "read", "deny", "*"])
    image.apply(["delete_acl", "User:x", "group", "g", "literal", "read", "deny", "*"])
    again = MetadataImage.from_snapshot(image.to_snapshot())
    assert set(again.scram_users) == {"alice"} and again.scram_users["alice"][1] == 8192
    assert again.acls == {tuple(acl)}
    assert again.to_snapshot() == image.to_snapshot()


@pytest.mark.parametrize("settings, message", [
    ({"security_protocol": "SSL"}, "setting security_protocol SSL needs ssl_certfile and ssl_keyfile"),
    ({"security_protocol": "SASL_PLAINTEXT"}, "needs broker_username and broker_password"),
    ({"acls_enabled": "true"}, "setting acls_enabled needs authenticated principals"),
    ({"security_protocol": "SASL_SSL", "broker_username": "a", "broker_password": "b",
      "ssl_certfile": str(REPO_ROOT / "README.md"), "ssl_keyfile": str(REPO_ROOT / "README.md")},
     "setting ssl_certfile/ssl_keyfile: cannot load"),
])
async def test_unworkable_security_settings_stop_the_start_with_one_line(tmp_path, settings, message):
    broker = Broker(load_config(environ={}, flags={"listen": "127.0.0.1:0", "data_dir": str(tmp_path), **settings}))
    with pytest.raises(BrokerStartError) as info:
        await broker.start()
    assert message in str(info.value) and "\n" not in str(info.value)


async def _tidelog(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDELOG_")}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "import sys; from broker.cli import main; sys.exit(main())",
                                                *args, cwd=REPO_ROOT, env=env,
                                                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(stdin)
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.timeout(60)
async def test_the_cli_manages_users_and_acls_through_the_controller(tmp_path):
    broker = Broker(load_config(environ={}, flags={
        "listen": "127.0.0.1:0", "data_dir": str(tmp_path / "b1"), "security_protocol": "SASL_PLAINTEXT",
        "broker_username": "admin", "broker_password": "admin-secret", "acls_enabled": "true"}))
    await broker.start()
    try:
        host, port = broker.bound_address
        admin_config = tmp_path / "admin.properties"
        admin_config.write_text("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-256\n"
                                "sasl.username=admin\nsasl.password=admin-secret\n")
        common = ["--bootstrap", f"{host}:{port}", "--command-config", str(admin_config)]
        assert (await _tidelog("users", "add", "alice", "--password-stdin", *common, stdin=b"alice-secret\n"))[0] == 0
        code, out, err = await _tidelog("acls", "add", "--principal", "User:alice", "--topic", "orders",
                                        "--operation", "write", "--operation", "describe", *common)
        assert code == 0, err
        code, out, _ = await _tidelog("users", "list", *common)
        assert code == 0 and out.startswith("alice\tSCRAM-SHA-256\titerations=8192")
        code, out, _ = await _tidelog("acls", "list", "--principal", "User:alice", *common)
        assert sorted(out.splitlines()) == ["User:alice\tallow\tdescribe\ttopic:orders",
                                            "User:alice\tallow\twrite\ttopic:orders"]
        assert "alice" in broker.metadata.image.scram_users
        code, out, err = await _tidelog("users", "list", "--bootstrap", f"{host}:{port}")  # no credentials
        assert code == 1 and err.startswith("tidelog: error: SASL_AUTHENTICATION_FAILED") and err.count("\n") == 1
        code, out, _ = await _tidelog("acls", "remove", "--principal", "User:alice", "--operation", "write", *common)
        assert code == 0 and out.strip() == "removed User:alice\tallow\twrite\ttopic:orders"
        assert (await _tidelog("users", "delete", "alice", *common))[0] == 0
        code, _, err = await _tidelog("users", "delete", "alice", *common)
        assert code == 1 and "RESOURCE_NOT_FOUND" in err
    finally:
        await broker.stop()


async def test_scram_login_cost_is_small_for_the_broker(tmp_path):
    """The broker holds derived keys, so its side of a login is a few HMACs; the client's
    PBKDF2 is paid once per client (cached per salt), not per connection."""
    credential = make_credential("pw", iterations=8192)
    started = time.perf_counter()
    for _ in range(50):
        client = ScramClient("u", "pw", salted_cache={})
        server = ScramServer(lambda user: credential)
        first = client.first()
        final = client.final(server.first(first))
        client_done = time.perf_counter()
        client.verify(server.final(final))
    per_login_ms = (time.perf_counter() - started) * 1000 / 50
    print(f"SCRAM-SHA-256 login with 8192 iterations, both sides, no cache: {per_login_ms:.2f} ms")
    assert per_login_ms < 200
    assert client_done  # the figure above is what `pytest -s -k login_cost` prints
