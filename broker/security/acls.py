"""ACLs: what each binding means, how they are checked, and the authorizer the dispatcher asks.

A binding is (principal, resource_type, resource_name, pattern_type, operation, permission, host):

    principal      "User:alice", or "User:*" for every principal
    resource_type  topic | group | cluster (the cluster's name is "cluster") | transactional_id
    resource_name  a name; with pattern_type "prefixed", every name starting with it; "*"
                   (literal) matches every name
    operation      read | write | create | delete | describe | alter | cluster_action | all
    permission     allow | deny
    host           "*" (per-host rules are not supported yet: any other value is refused)

A request is allowed when some allow binding matches it and no deny binding does (deny wins).
With ACLs enabled and nothing matching, it is denied. read, write, delete and alter each imply
describe, as in Kafka: a principal that may read a topic may also look it up. Super users
(broker config `super_users`, and the brokers' own principal) skip the check.

Cost: bindings are indexed by (resource_type, principal) once per change of the image's ACLs
(`acls_version`); a decision is then cached per (principal, type, name, operation) until the
next change, so a steady stream of produce requests costs one dict lookup per topic.
"""

from __future__ import annotations

from typing import Iterable

from client.protocol.errors import ErrorCode
from client.protocol.messages import AclBinding, AclFilter

RESOURCE_TYPES = ("topic", "group", "cluster", "transactional_id")
PATTERN_TYPES = ("literal", "prefixed")
OPERATIONS = ("read", "write", "create", "delete", "describe", "alter", "cluster_action", "all")
PERMISSIONS = ("allow", "deny")
CLUSTER_NAME = "cluster"
ANY_PRINCIPAL = "User:*"
ANONYMOUS = "User:ANONYMOUS"
# Operations that also grant describe.
_IMPLIES_DESCRIBE = frozenset({"read", "write", "delete", "alter"})
DENIED_CODE = {
    "topic": ErrorCode.TOPIC_AUTHORIZATION_FAILED,
    "group": ErrorCode.GROUP_AUTHORIZATION_FAILED,
    "cluster": ErrorCode.CLUSTER_AUTHORIZATION_FAILED,
    "transactional_id": ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
}
DECISIONS_CACHED_MAX = 100_000  # past this the cache is cleared: a flood of names cannot grow it


def binding_problem(binding: AclBinding) -> str | None:
    """Why a binding cannot be stored, or None."""
    kind, _, name = binding.principal.partition(":")
    if kind != "User" or not name:
        return f"principal {binding.principal!r} must be User:<name> (or User:*)"
    for value, allowed, what in ((binding.resource_type, RESOURCE_TYPES, "resource type"),
                                 (binding.pattern_type, PATTERN_TYPES, "pattern type"),
                                 (binding.operation, OPERATIONS, "operation"),
                                 (binding.permission, PERMISSIONS, "permission")):
        if value not in allowed:
            return f"{what} {value!r} must be one of {', '.join(allowed)}"
    if not binding.resource_name:
        return "resource name must not be empty"
    if binding.resource_type == "cluster" and binding.resource_name != CLUSTER_NAME:
        return f"the cluster resource is named {CLUSTER_NAME!r}"
    if binding.host != "*":
        return "host must be '*': per-host ACLs are not supported yet"
    if len(binding.resource_name) > 249 or len(binding.principal) > 256:
        return "resource name or principal too long"
    return None


def filter_matches(acl_filter: AclFilter, acl: tuple) -> bool:
    return all(want is None or want == have for want, have in zip(acl_filter.to_row(), acl))


class Authorizer:
    """Decides (principal, resource type, name, operation) against the image's ACLs."""

    def __init__(self, super_users: Iterable[str]):
        self.super_users = frozenset(super_users)
        self._version = -1
        # (resource_type, principal) -> [(name, prefixed, operation, deny)]
        self._index: dict[tuple[str, str], list[tuple[str, bool, str, bool]]] = {}
        self._decisions: dict[tuple[str, str, str, str], bool] = {}

    def refresh(self, acls: set, version: int) -> None:
        if version == self._version:
            return
        index: dict[tuple[str, str], list[tuple[str, bool, str, bool]]] = {}
        for principal, resource_type, name, pattern, operation, permission, _host in acls:
            index.setdefault((resource_type, principal), []).append(
                (name, pattern == "prefixed", operation, permission == "deny"))
        self._index, self._decisions, self._version = index, {}, version

    def allowed(self, principal: str, resource_type: str, name: str, operation: str) -> bool:
        if principal in self.super_users:
            return True
        key = (principal, resource_type, name, operation)
        decision = self._decisions.get(key)
        if decision is None:
            decision = self._decide(principal, resource_type, name, operation)
            if len(self._decisions) >= DECISIONS_CACHED_MAX:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    def _decide(self, principal: str, resource_type: str, name: str, operation: str) -> bool:
        allow = False
        for who in (principal, ANY_PRINCIPAL):
            for rule_name, prefixed, rule_op, deny in self._index.get((resource_type, who), ()):
                if prefixed:
                    if not name.startswith(rule_name):
                        continue
                elif rule_name != name and rule_name != "*":
                    continue
                if deny:
                    if rule_op == "all" or rule_op == operation:
                        return False  # deny wins; a deny of read does not deny describe
                elif rule_op == "all" or rule_op == operation or (
                        operation == "describe" and rule_op in _IMPLIES_DESCRIBE):
                    allow = True
        return allow
