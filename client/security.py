"""How the SDK secures its connections, in aiokafka's shape.

    ctx = create_ssl_context(cafile="ca.pem")                  # or any ssl.SSLContext
    Producer(bootstrap_servers="broker:9093", security_protocol="SASL_SSL", ssl_context=ctx,
             sasl_mechanism="SCRAM-SHA-256", sasl_plain_username="alice", sasl_plain_password="...")

`security_protocol` is PLAINTEXT (default), SSL (TLS; with a client certificate in the context
the broker may take the principal from it), SASL_PLAINTEXT or SASL_SSL (SCRAM-SHA-256 after
connecting, over TLS for SASL_SSL). Admin, Producer and Consumer take these keywords and hand a
`SecurityConfig` to every connection they open; brokers use the same class to talk to each other.

The exchange on a new connection: TLS handshake (SSL, SASL_SSL), ApiVersions, then SaslHandshake
and the SCRAM messages in SaslAuthenticate requests (SASL_*). A refusal raises
SaslAuthenticationFailedError (not retriable: a wrong password does not get better by waiting).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

from client.errors import (
    IllegalSaslStateError,
    SaslAuthenticationFailedError,
    UnsupportedSaslMechanismError,
    error_for_code,
)
from client.protocol.errors import ErrorCode
from client.protocol.messages import AclBinding, AclFilter, SaslAuthenticateRequest, SaslHandshakeRequest
from client.protocol.scram import MECHANISM as SCRAM_SHA_256
from client.protocol.scram import ScramClient, ScramError

__all__ = ["AclBinding", "AclFilter", "SecurityConfig", "create_ssl_context", "sasl_authenticate"]

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = (SCRAM_SHA_256,)


@dataclass(frozen=True)
class SecurityConfig:
    """Security settings of one client (or of a broker talking to its peers)."""

    security_protocol: str = "PLAINTEXT"
    ssl_context: ssl.SSLContext | None = None
    sasl_mechanism: str = SCRAM_SHA_256
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = field(default=None, repr=False)
    # SaltedPassword per (password, salt, iterations): PBKDF2 once per client, not per connection.
    _salted_cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"security_protocol must be one of {', '.join(SECURITY_PROTOCOLS)}, "
                             f"got {self.security_protocol!r}")
        if self.uses_ssl and self.ssl_context is None:
            raise ValueError(f"security_protocol {self.security_protocol} needs ssl_context "
                             "(client.security.create_ssl_context(cafile=...))")
        if self.ssl_context is not None and not isinstance(self.ssl_context, ssl.SSLContext):
            raise ValueError("ssl_context must be an ssl.SSLContext")
        if self.uses_sasl:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ValueError(f"sasl_mechanism must be one of {', '.join(SASL_MECHANISMS)}, got {self.sasl_mechanism!r}")
            if not self.sasl_plain_username or self.sasl_plain_password is None:
                raise ValueError(f"security_protocol {self.security_protocol} needs sasl_plain_username "
                                 "and sasl_plain_password")

    @property
    def uses_ssl(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @classmethod
    def from_kwargs(cls, security_protocol: str = "PLAINTEXT", ssl_context: ssl.SSLContext | None = None,
                    sasl_mechanism: str = SCRAM_SHA_256, sasl_plain_username: str | None = None,
                    sasl_plain_password: str | None = None) -> SecurityConfig | None:
        """None for plain PLAINTEXT without anything else (the connection then does nothing extra)."""
        if security_protocol == "PLAINTEXT" and ssl_context is None and sasl_plain_username is None:
            return None
        return cls(security_protocol, ssl_context, sasl_mechanism, sasl_plain_username, sasl_plain_password)


def create_ssl_context(*, cafile: str | None = None, certfile: str | None = None, keyfile: str | None = None,
                       password: str | None = None, check_hostname: bool = True) -> ssl.SSLContext:
    """A client TLS context: verify the broker against `cafile` (system CAs when None), and
    present `certfile`/`keyfile` when the broker asks for a client certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname
    if certfile:
        context.load_cert_chain(certfile, keyfile, password)
    return context


async def sasl_authenticate(conn: Any, security: SecurityConfig) -> None:
    """Run SaslHandshake + SCRAM over `conn` (a client.connection.Connection just past
    ApiVersions). Raises SaslAuthenticationFailedError, UnsupportedSaslMechanismError."""
    where = f"SASL handshake with broker {conn.broker}"
    response = await conn.request(SaslHandshakeRequest(mechanism=security.sasl_mechanism), api_version=0)
    if response.error_code != ErrorCode.NONE:
        offered = ", ".join(response.mechanisms) or "none"
        if response.error_code == ErrorCode.UNSUPPORTED_SASL_MECHANISM:
            raise UnsupportedSaslMechanismError(
                f"broker {conn.broker} does not offer {security.sasl_mechanism} (it offers: {offered})")
        raise error_for_code(response.error_code, where=where)
    scram = ScramClient(security.sasl_plain_username, security.sasl_plain_password,
                        salted_cache=security._salted_cache)
    user = security.sasl_plain_username
    server_first = await _step(conn, scram.first(), where)
    try:
        client_final = scram.final(server_first)
    except ScramError as exc:
        raise SaslAuthenticationFailedError(f"authentication as {user!r} with broker {conn.broker} failed: {exc}") from None
    server_final = await _step(conn, client_final, where, user)
    try:
        scram.verify(server_final)
    except ScramError as exc:
        raise SaslAuthenticationFailedError(f"broker {conn.broker} failed to prove itself: {exc}") from None


async def _step(conn: Any, message: str, where: str, user: str | None = None) -> str:
    response = await conn.request(SaslAuthenticateRequest(auth_bytes=message.encode()), api_version=0)
    if response.error_code != ErrorCode.NONE:
        text = response.error_message or ErrorCode.SASL_AUTHENTICATION_FAILED.message
        if response.error_code == ErrorCode.SASL_AUTHENTICATION_FAILED:
            raise SaslAuthenticationFailedError(f"{text} ({where})")
        if response.error_code == ErrorCode.ILLEGAL_SASL_STATE:
            raise IllegalSaslStateError(f"{text} ({where})")
        raise error_for_code(response.error_code, text, where)
    try:
        return response.auth_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslAuthenticationFailedError(f"the broker's SCRAM message is not UTF-8 ({where})") from None
