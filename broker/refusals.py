"""The one shape of a refusal inside the broker: a wire error code and a message for the client.

The controller (ControllerError), the group coordinator (GroupError) and the transaction
coordinator (TxnError) raise their own subclasses, so each handler catches what its area raises,
while code that passes a refusal on from one area to another (broker/coordinator_backend.py)
needs only this base.
"""

from __future__ import annotations

from client.protocol.errors import ErrorCode


class Refusal(Exception):
    """A request refused or not carried out: `code` is what the client is answered."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
