"""One broker's security: TLS contexts, SASL/SCRAM sessions, the authorizer, quotas, counters.

    security = SecurityManager(config, image=lambda: metadata.image)   # raises SecurityConfigError
    security.server_ssl_context     # for create_server (None: plaintext listener)
    security.client_security        # client.security.SecurityConfig for broker-to-broker connections
    session = security.new_session()                 # per connection, when checks_requests
    refusal = security.admit(session, api_key, request)   # the dispatcher, before the handler
    delay_s = security.after(session, api_key, frame_bytes, request, response)  # quotas, filtering

Principals are "User:<name>": the SCRAM user on a SASL listener; on an SSL listener with client
certificates, the certificate's common name; otherwise User:ANONYMOUS. The brokers' own
principal (`broker_username`, or listed in `super_users` for mTLS) is a super user, so brokers
are never locked out of each other by ACLs.

When nothing is enabled (PLAINTEXT, no ACLs, no quotas) `checks_requests` is False: connections
get no session and the dispatcher skips every check (one attribute test per request).
"""

from __future__ import annotations

import contextvars
import ssl
from dataclasses import asdict, dataclass
from typing import Any, Callable

from client.protocol.errors import ErrorCode
from client.protocol.frames import payload_part_bytes
from client.protocol.messages import ApiKey, TopicMetadata
from client.protocol.scram import ScramCredential, ScramServer, make_credential
from client.security import SecurityConfig, create_ssl_context

from broker.security.acls import ANONYMOUS, DENIED_CODE, Authorizer
from broker.security.quotas import FETCH, PRODUCE, Quota, QuotaManager, parse_quota_overrides
from broker.security.rules import UNCHECKED, filter_response, needs

SCRAM_MECHANISM = "SCRAM-SHA-256"
# Metadata asks about topics one by one: those denied are answered per topic (Kafka's way, and
# the SDK's: TOPIC_AUTHORIZATION_FAILED is final for that topic), not by refusing the request.
# Set by admit(), read by after(), in the task of one request.
_denied_topics: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("denied_topics", default=None)
_CLIENT_AUTH = {"none": ssl.CERT_NONE, "requested": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


class SecurityConfigError(ValueError):
    """A security setting that cannot work; one line naming the setting."""


@dataclass(slots=True)
class SecurityStats:
    """Counters for metrics (broker/security/metrics.py) and tests."""

    authentications_succeeded: int = 0
    authentications_failed: int = 0
    unauthenticated_refused: int = 0
    topic_denied: int = 0
    group_denied: int = 0
    cluster_denied: int = 0
    transactional_id_denied: int = 0
    connections_refused_per_ip: int = 0
    in_flight_pauses: int = 0
    frames_too_large: int = 0
    slow_frames_closed: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(slots=True)
class Session:
    """The security state of one client connection."""

    principal: str = ANONYMOUS
    authenticated: bool = True  # False on a SASL listener until the SCRAM exchange succeeds
    step: str = "start"  # SASL: start -> handshake -> first -> done
    scram: ScramServer | None = None
    close_requested: bool = False  # answer, then close (failed or skipped authentication)


def check_security_settings(config: Any) -> None:
    """Security settings that only make sense together; one line naming what is missing."""
    protocol = config.security_protocol
    if protocol in ("SSL", "SASL_SSL") and not (config.ssl_certfile and config.ssl_keyfile):
        raise SecurityConfigError(f"setting security_protocol {protocol} needs ssl_certfile and ssl_keyfile")
    if config.ssl_client_auth != "none" and not config.ssl_cafile:
        raise SecurityConfigError(f"setting ssl_client_auth {config.ssl_client_auth} needs ssl_cafile (the CA client certificates are checked against)")
    if config.ssl_client_auth != "none" and protocol not in ("SSL", "SASL_SSL"):
        raise SecurityConfigError(f"setting ssl_client_auth {config.ssl_client_auth} needs security_protocol SSL or SASL_SSL")
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL") and not (config.broker_username and config.broker_password):
        raise SecurityConfigError(f"setting security_protocol {protocol} needs broker_username and broker_password "
                          "(the credential brokers log in to each other with)")
    if config.acls_enabled and protocol == "PLAINTEXT":
        raise SecurityConfigError("setting acls_enabled needs authenticated principals: security_protocol SASL_PLAINTEXT, "
                          "SASL_SSL, or SSL with ssl_client_auth required")
    if config.acls_enabled and protocol == "SSL" and config.ssl_client_auth != "required":
        raise SecurityConfigError("setting acls_enabled with security_protocol SSL needs ssl_client_auth required "
                          "(principals come from client certificates)")


def certificate_principal(peercert: dict | None) -> str | None:
    """User:<common name> of a verified client certificate, or None."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and value:
                return f"User:{value}"
    return None


class SecurityManager:
    def __init__(self, config: Any, image: Callable[[], Any], log: Any = None):
        self.config = config
        self._image = image
        self.log = log
        self.stats = SecurityStats()
        check_security_settings(config)
        protocol = config.security_protocol
        self.uses_ssl = protocol in ("SSL", "SASL_SSL")
        self.uses_sasl = protocol in ("SASL_PLAINTEXT", "SASL_SSL")
        self.server_ssl_context = self._server_context() if self.uses_ssl else None
        self.broker_principal: str | None = None
        self._broker_credential: ScramCredential | None = None
        if self.uses_sasl:
            self.broker_principal = f"User:{config.broker_username}"
            # The brokers' own credential lives in memory only: peers log in with it before any
            # metadata exists, so it cannot wait for the controller.
            self._broker_credential = make_credential(config.broker_password)
        super_users = {u.strip() for u in (config.super_users or "").split(",") if u.strip()}
        if self.broker_principal:
            super_users.add(self.broker_principal)
        self.super_users = frozenset(super_users)
        self.authorizer = Authorizer(self.super_users) if config.acls_enabled else None
        try:
            overrides = parse_quota_overrides(config.quota_overrides)
        except ValueError as exc:  # the config check already refused it; belt and braces
            raise SecurityConfigError(f"setting quota_overrides: {exc}") from None
        self.quotas = QuotaManager(Quota(config.quota_produce_bytes_per_s, config.quota_fetch_bytes_per_s),
                                   overrides, self.super_users)
        self.client_security = self._client_security()
        self.checks_requests = bool(self.uses_sasl or self.authorizer is not None or self.quotas.active)

    # --- configuration ---------------------------------------------------------------------------

    def _server_context(self) -> ssl.SSLContext:
        config = self.config
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(config.ssl_certfile, config.ssl_keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise SecurityConfigError(f"setting ssl_certfile/ssl_keyfile: cannot load {config.ssl_certfile} with "
                                      f"{config.ssl_keyfile}: {getattr(exc, 'strerror', None) or exc}") from None
        if config.ssl_cafile:
            try:
                context.load_verify_locations(config.ssl_cafile)
            except (OSError, ssl.SSLError) as exc:
                raise SecurityConfigError(f"setting ssl_cafile: cannot load {config.ssl_cafile}: "
                                          f"{getattr(exc, 'strerror', None) or exc}") from None
        context.verify_mode = _CLIENT_AUTH[config.ssl_client_auth]
        return context

    def _client_security(self) -> SecurityConfig | None:
        """How this broker connects to its peers: the listener's protocol, its own certificate
        (for peers that ask for one) and, with SASL, the broker credential."""
        config = self.config
        if config.security_protocol == "PLAINTEXT":
            return None
        context = None
        if self.uses_ssl:
            try:
                context = create_ssl_context(cafile=config.ssl_cafile, certfile=config.ssl_certfile,
                                             keyfile=config.ssl_keyfile, check_hostname=config.ssl_check_hostname)
            except (OSError, ssl.SSLError) as exc:
                raise SecurityConfigError(f"setting ssl_cafile: cannot build the inter-broker TLS context: "
                                          f"{getattr(exc, 'strerror', None) or exc}") from None
        return SecurityConfig(config.security_protocol, context, SCRAM_MECHANISM,
                              config.broker_username, config.broker_password)

    # --- sessions --------------------------------------------------------------------------------

    def new_session(self, transport: Any) -> Session:
        session = Session()
        if self.uses_ssl:
            principal = certificate_principal(transport.get_extra_info("peercert"))
            if principal is not None:
                session.principal = principal
        if self.uses_sasl:
            session.authenticated = False
        return session

    def credential(self, user: str) -> ScramCredential | None:
        if self._broker_credential is not None and user == self.config.broker_username:
            return self._broker_credential
        stored = self._image().scram_users.get(user)
        if stored is None or stored[0] != SCRAM_MECHANISM:
            return None
        _, iterations, salt, stored_key, server_key = stored
        return ScramCredential(salt, iterations, stored_key, server_key)

    # --- per request -----------------------------------------------------------------------------

    def admit(self, session: Session, api_key: int, request: Any) -> tuple[ErrorCode, str] | None:
        """None to go on, or the error to answer with (the request is not handled)."""
        if api_key in UNCHECKED:
            return None
        if not session.authenticated:
            session.close_requested = True
            self.stats.unauthenticated_refused += 1
            return (ErrorCode.SASL_AUTHENTICATION_FAILED,
                    f"authenticate first: this listener requires SASL {SCRAM_MECHANISM} "
                    f"(security_protocol {self.config.security_protocol})")
        authorizer = self.authorizer
        if authorizer is None or session.principal in authorizer.super_users:
            return None
        image = self._image()
        authorizer.refresh(image.acls, image.acls_version)
        principal = session.principal
        if api_key == ApiKey.METADATA and request.topics:
            self._split_metadata(principal, request, image)
            return None
        for resource_type, name, operation in needs(api_key, request, image, self.config.auto_create_topics):
            if not authorizer.allowed(principal, resource_type, name, operation):
                setattr(self.stats, f"{resource_type}_denied", getattr(self.stats, f"{resource_type}_denied") + 1)
                return DENIED_CODE[resource_type], f"{principal} is not allowed to {operation} {resource_type} {name!r}"
        return None

    def _split_metadata(self, principal: str, request: Any, image: Any) -> None:
        allowed, denied = [], []
        auto_create = self.config.auto_create_topics and request.allow_auto_topic_creation
        for name in request.topics:
            ok = self.authorizer.allowed(principal, "topic", name, "describe") and (
                not auto_create or name in image.topics or self.authorizer.allowed(principal, "topic", name, "create"))
            (allowed if ok else denied).append(name)
        if denied:
            self.stats.topic_denied += len(denied)
            request.topics = allowed  # the handler neither describes nor auto-creates the others
            _denied_topics.set(denied)

    def after(self, session: Session, api_key: int, frame_bytes: int, request: Any, response: Any, now: float) -> float:
        """Filter listings; return how long to hold the response for quotas (setting its
        throttle_time_ms when it has one)."""
        authorizer = self.authorizer
        if authorizer is not None and session.principal not in authorizer.super_users:
            principal = session.principal
            filter_response(api_key, request, response,
                            lambda kind, name, op: authorizer.allowed(principal, kind, name, op))
            denied = _denied_topics.get()
            if denied and api_key == ApiKey.METADATA and response is not None:
                response.topics.extend(TopicMetadata(ErrorCode.TOPIC_AUTHORIZATION_FAILED, name, []) for name in denied)
        if not self.quotas.active:
            return 0.0
        if api_key == ApiKey.PRODUCE:
            delay = self.quotas.record(session.principal, PRODUCE, frame_bytes, now)
        elif api_key == ApiKey.FETCH and response is not None and request.replica_id < 0:
            sent = sum(payload_part_bytes(part) for part in response.payload_parts())
            delay = self.quotas.record(session.principal, FETCH, sent, now)
        else:
            return 0.0
        if delay and response is not None and hasattr(response, "throttle_time_ms"):
            response.throttle_time_ms = int(delay * 1000)
        return delay

