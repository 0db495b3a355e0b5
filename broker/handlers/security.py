"""SaslHandshake, SaslAuthenticate, and the user and ACL admin APIs (broker/security/).

SASL runs per connection: the dispatcher puts the connection's Session in `current_session`.
A failed or out-of-order step answers SASL_AUTHENTICATION_FAILED / ILLEGAL_SASL_STATE and the
connection closes after the answer, as in Kafka.

Users and ACLs are changed by the active controller only (others answer NOT_CONTROLLER, which
the SDK's Admin retries against the controller); they are committed as metadata records, so
every broker learns them from the Raft log. The password never reaches the broker: the client
sends the salt, iteration count and the two derived keys (client/protocol/scram.py).
"""

from __future__ import annotations

from typing import Any

from client.protocol.errors import ErrorCode
from client.protocol.messages import (
    AclBinding,
    AclDeleteResult,
    AclResult,
    AlterUserScramCredentialsResponse,
    CreateAclsResponse,
    DeleteAclsResponse,
    DescribeAclsResponse,
    DescribeUserScramCredentialsResponse,
    SaslAuthenticateResponse,
    SaslHandshakeResponse,
    ScramCredentialInfo,
    UserResult,
)
from client.protocol.scram import ITERATIONS_MAX, ITERATIONS_MIN, MECHANISM, ScramError, ScramServer

from broker.controller import ControllerError
from broker.handlers import HandlerContext, current_peer, current_session
from broker.security.acls import binding_problem, filter_matches


USER_NAME_CHARS_MAX = 256
_KEY_BYTES = 32  # SHA-256
_SALT_BYTES_MAX = 64


def _security(ctx: HandlerContext) -> Any:
    return ctx.security


async def handle_sasl_handshake(ctx: HandlerContext, request) -> SaslHandshakeResponse:
    session, security = current_session.get(), _security(ctx)
    if session is None or security is None or not security.uses_sasl:
        return SaslHandshakeResponse(error_code=ErrorCode.ILLEGAL_SASL_STATE, mechanisms=[])
    if session.step != "start":
        session.close_requested = True
        return SaslHandshakeResponse(error_code=ErrorCode.ILLEGAL_SASL_STATE, mechanisms=[MECHANISM])
    if request.mechanism != MECHANISM:
        session.close_requested = True
        return SaslHandshakeResponse(error_code=ErrorCode.UNSUPPORTED_SASL_MECHANISM, mechanisms=[MECHANISM])
    session.step = "handshake"
    session.scram = ScramServer(security.credential)
    return SaslHandshakeResponse(mechanisms=[MECHANISM])


async def handle_sasl_authenticate(ctx: HandlerContext, request) -> SaslAuthenticateResponse:
    session, security = current_session.get(), _security(ctx)
    if session is None or security is None or session.step not in ("handshake", "first"):
        if session is not None:
            session.close_requested = True
        return SaslAuthenticateResponse(error_code=ErrorCode.ILLEGAL_SASL_STATE,
                                        error_message="SaslAuthenticate needs a SaslHandshake first on a SASL listener")
    try:
        text = request.auth_bytes.decode("utf-8")
        if session.step == "handshake":
            reply = session.scram.first(text)
            session.step = "first"
        else:
            reply = session.scram.final(text)
            session.step = "done"
            session.authenticated = True
            session.principal = f"User:{session.scram.username}"
            session.scram = None
            security.stats.authentications_succeeded += 1
    except (ScramError, UnicodeDecodeError) as exc:
        session.close_requested = True
        session.step = "failed"
        security.stats.authentications_failed += 1
        user = session.scram.username if session.scram is not None else None
        ctx.warn_bad_input("authentication_failed", _peer(), user=user or "?", detail=str(exc)[:120])
        return SaslAuthenticateResponse(error_code=ErrorCode.SASL_AUTHENTICATION_FAILED,
                                        error_message=f"authentication failed: {exc}"[:200])
    return SaslAuthenticateResponse(auth_bytes=reply.encode())


def _peer() -> str:
    return current_peer.get()


# --- users ------------------------------------------------------------------------------------


async def handle_describe_user_scram_credentials(ctx: HandlerContext, request) -> DescribeUserScramCredentialsResponse:
    users = ctx.metadata.image.scram_users
    names = sorted(users) if request.users is None else request.users
    missing = [name for name in names if name not in users]
    if missing:
        return DescribeUserScramCredentialsResponse(error_code=ErrorCode.RESOURCE_NOT_FOUND,
                                                    error_message=f"no SCRAM user {missing[0]!r}")
    return DescribeUserScramCredentialsResponse(
        users=[ScramCredentialInfo(name, users[name][0], users[name][1]) for name in names])


def _upsertion_problem(upsertion) -> str | None:
    if not upsertion.user or len(upsertion.user) > USER_NAME_CHARS_MAX:
        return f"user name must be 1 to {USER_NAME_CHARS_MAX} characters"
    if upsertion.mechanism != MECHANISM:
        return f"mechanism must be {MECHANISM}"
    if not ITERATIONS_MIN <= upsertion.iterations <= ITERATIONS_MAX:
        return f"iterations must be {ITERATIONS_MIN} to {ITERATIONS_MAX}"
    if not 8 <= len(upsertion.salt) <= _SALT_BYTES_MAX:
        return f"salt must be 8 to {_SALT_BYTES_MAX} bytes"
    if len(upsertion.stored_key) != _KEY_BYTES or len(upsertion.server_key) != _KEY_BYTES:
        return f"stored_key and server_key must be {_KEY_BYTES} bytes (SHA-256)"
    return None


async def handle_alter_user_scram_credentials(ctx: HandlerContext, request) -> AlterUserScramCredentialsResponse:
    metadata = ctx.metadata
    if not metadata.is_controller:
        error = metadata.not_controller()
        rows = [u.user for u in request.upsertions] + [d.user for d in request.deletions]
        return AlterUserScramCredentialsResponse(results=[UserResult(u, error.code, str(error)) for u in rows])
    results: list[UserResult] = []
    records: list[list] = []
    users = metadata.image.scram_users
    for upsertion in request.upsertions:
        problem = _upsertion_problem(upsertion)
        if problem:
            results.append(UserResult(upsertion.user, ErrorCode.UNACCEPTABLE_CREDENTIAL, problem))
            continue
        records.append(["scram_user", upsertion.user, upsertion.mechanism, upsertion.iterations,
                        upsertion.salt, upsertion.stored_key, upsertion.server_key])
        results.append(UserResult(upsertion.user, ErrorCode.NONE, None))
    for deletion in request.deletions:
        if deletion.user not in users:
            results.append(UserResult(deletion.user, ErrorCode.RESOURCE_NOT_FOUND, f"no SCRAM user {deletion.user!r}"))
            continue
        records.append(["delete_scram_user", deletion.user, deletion.mechanism])
        results.append(UserResult(deletion.user, ErrorCode.NONE, None))
    if records:
        error = await _commit(ctx, records)
        if error is not None:
            results = [UserResult(r.user, error[0], error[1]) if r.error_code == ErrorCode.NONE else r for r in results]
    return AlterUserScramCredentialsResponse(results=results)


async def _commit(ctx: HandlerContext, records: list[list]) -> tuple[ErrorCode, str] | None:
    try:
        await ctx.metadata.controller.commit_records(records)
    except ControllerError as exc:
        return exc.code, str(exc)
    return None


# --- ACLs -------------------------------------------------------------------------------------


def _binding(acl: tuple) -> AclBinding:
    return AclBinding(*acl)


async def handle_describe_acls(ctx: HandlerContext, request) -> DescribeAclsResponse:
    acls = sorted(acl for acl in ctx.metadata.image.acls if filter_matches(request.filter, acl))
    return DescribeAclsResponse(acls=[_binding(acl) for acl in acls])


async def handle_create_acls(ctx: HandlerContext, request) -> CreateAclsResponse:
    metadata = ctx.metadata
    if not metadata.is_controller:
        error = metadata.not_controller()
        return CreateAclsResponse(results=[AclResult(error.code, str(error)) for _ in request.acls])
    results, records = [], []
    for binding in request.acls:
        problem = binding_problem(binding)
        if problem:
            results.append(AclResult(ErrorCode.INVALID_REQUEST, problem))
        else:
            records.append(["acl", *binding.to_row()])
            results.append(AclResult(ErrorCode.NONE, None))
    if records:
        error = await _commit(ctx, records)
        if error is not None:
            results = [AclResult(*error) if r.error_code == ErrorCode.NONE else r for r in results]
    return CreateAclsResponse(results=results)


async def handle_delete_acls(ctx: HandlerContext, request) -> DeleteAclsResponse:
    metadata = ctx.metadata
    if not metadata.is_controller:
        error = metadata.not_controller()
        return DeleteAclsResponse(results=[AclDeleteResult(error.code, str(error), []) for _ in request.filters])
    acls = metadata.image.acls
    matched = [sorted(acl for acl in acls if filter_matches(f, acl)) for f in request.filters]
    records = [["delete_acl", *acl] for acl in sorted({acl for group in matched for acl in group})]
    if records:
        error = await _commit(ctx, records)
        if error is not None:
            return DeleteAclsResponse(results=[AclDeleteResult(error[0], error[1], []) for _ in request.filters])
    return DeleteAclsResponse(results=[AclDeleteResult(ErrorCode.NONE, None, [_binding(a) for a in group])
                                       for group in matched])
