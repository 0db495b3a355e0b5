"""SCRAM-SHA-256 (RFC 5802, RFC 7677), sans I/O: the client's and the server's halves.

The exchange is three messages carried by SaslAuthenticate requests:

    client-first   n,,n=<user>,r=<client nonce>
    server-first   r=<client nonce + server nonce>,s=<base64 salt>,i=<iterations>
    client-final   c=biws,r=<nonce>,p=<base64 proof>
    server-final   v=<base64 server signature>    (or e=<error> when the proof is wrong)

The password is stretched once with PBKDF2-HMAC-SHA-256 (salted, iterated) into SaltedPassword;
the server keeps only the salt, the iteration count, StoredKey = H(HMAC(SaltedPassword,
"Client Key")) and ServerKey = HMAC(SaltedPassword, "Server Key"). From those it can check a
proof and prove itself to the client, but never recover the password or log in as the user.

Passwords are used as their UTF-8 bytes, without SASLprep (as Kafka does). Channel binding is
not offered (gs2 header "n,,"): TLS, when on, already authenticates the broker.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

MECHANISM = "SCRAM-SHA-256"
ITERATIONS_MIN = 4096  # RFC 7677's floor (and Kafka's)
ITERATIONS_MAX = 16384  # bounds the cost a stored credential imposes on every client login
ITERATIONS_DEFAULT = 8192
SALT_BYTES = 16
NONCE_BYTES = 18  # 24 base64 characters
MESSAGE_CHARS_MAX = 1024  # a longer SCRAM message is refused before it is parsed
_GS2_HEADER = "n,,"
_CHANNEL_BINDING = base64.b64encode(_GS2_HEADER.encode()).decode()  # "biws"


class ScramError(Exception):
    """A SCRAM message is malformed or a check failed; the message says which, never a secret."""


@dataclass(frozen=True, slots=True)
class ScramCredential:
    """What a server stores for one user: enough to verify, not enough to impersonate."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)


def make_credential(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS_DEFAULT) -> ScramCredential:
    """Salt and stretch a password into what the server stores (done by the client that sets it)."""
    if not ITERATIONS_MIN <= iterations <= ITERATIONS_MAX:
        raise ScramError(f"iterations must be {ITERATIONS_MIN} to {ITERATIONS_MAX}, got {iterations}")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    salted = salted_password(password, salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    return ScramCredential(salt, iterations, hashlib.sha256(client_key).digest(), _hmac(salted, b"Server Key"))


def _escape_name(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


def _unescape_name(text: str) -> str:
    if "=" in text.replace("=3D", "").replace("=2C", ""):
        raise ScramError("user name has a bad '=' escape")
    return text.replace("=2C", ",").replace("=3D", "=")


def _attributes(message: str, expected: str) -> dict[str, str]:
    """'a=1,b=2' -> {'a': '1', 'b': '2'}, checking the attribute letters come in `expected` order."""
    if len(message) > MESSAGE_CHARS_MAX:
        raise ScramError(f"SCRAM message longer than {MESSAGE_CHARS_MAX} characters")
    parts = message.split(",")
    if len(parts) != len(expected):
        raise ScramError(f"SCRAM message must have {len(expected)} attributes, got {len(parts)}")
    values = {}
    for letter, part in zip(expected, parts):
        if len(part) < 2 or part[0] != letter or part[1] != "=":
            raise ScramError(f"SCRAM attribute {letter!r} missing or out of order")
        values[letter] = part[2:]
    return values


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ScramError(f"{what} is not base64") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class ScramClient:
    """The client's half: first() -> send; final(server_first) -> send; verify(server_final)."""

    def __init__(self, username: str, password: str, *, nonce: str | None = None, salted_cache: dict | None = None):
        self.username = username
        self._password = password
        self._nonce = nonce or secrets.token_urlsafe(NONCE_BYTES)
        self._first_bare = f"n={_escape_name(username)},r={self._nonce}"
        self._server_signature: bytes | None = None
        # (password, salt, iterations) -> SaltedPassword: PBKDF2 is the costly step, and a client
        # opening many connections as one user would otherwise pay it per connection.
        self._salted_cache = salted_cache

    def first(self) -> str:
        return _GS2_HEADER + self._first_bare

    def final(self, server_first: str) -> str:
        values = _attributes(server_first, "rsi")
        nonce, salt = values["r"], _b64decode(values["s"], "salt")
        if not nonce.startswith(self._nonce) or len(nonce) <= len(self._nonce):
            raise ScramError("the server's nonce does not extend the client's")
        if not values["i"].isdigit() or not ITERATIONS_MIN <= int(values["i"]) <= ITERATIONS_MAX:
            raise ScramError(f"iteration count {values['i']!r} is outside {ITERATIONS_MIN}..{ITERATIONS_MAX}")
        iterations = int(values["i"])
        key = (self._password, salt, iterations)
        salted = self._salted_cache.get(key) if self._salted_cache is not None else None
        if salted is None:
            salted = salted_password(self._password, salt, iterations)
            if self._salted_cache is not None:
                if len(self._salted_cache) >= 16:
                    self._salted_cache.clear()
                self._salted_cache[key] = salted
        without_proof = f"c={_CHANNEL_BINDING},r={nonce}"
        auth_message = f"{self._first_bare},{server_first},{without_proof}".encode()
        client_key = _hmac(salted, b"Client Key")
        signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={_b64(proof)}"

    def verify(self, server_final: str) -> None:
        """Raise ScramError unless the server proved it holds this user's ServerKey."""
        if server_final.startswith("e="):
            raise ScramError(f"the server refused: {server_final[2:][:100]}")
        values = _attributes(server_final, "v")
        if self._server_signature is None or not hmac.compare_digest(
                _b64decode(values["v"], "server signature"), self._server_signature):
            raise ScramError("the server's signature is wrong: it does not hold this user's credential")


class ScramServer:
    """The server's half for one connection: first(client_first) -> reply; final(client_final)
    -> reply, after which `username` is authenticated. `lookup(user)` returns the stored
    ScramCredential or None; an unknown user gets a made-up salt and fails only at the proof,
    so a client cannot tell unknown users from wrong passwords."""

    def __init__(self, lookup, *, nonce: str | None = None, decoy_key: bytes = b""):
        self._lookup = lookup
        self._nonce_extra = nonce or secrets.token_urlsafe(NONCE_BYTES)
        self._decoy_key = decoy_key or secrets.token_bytes(32)
        self.username: str | None = None
        self._credential: ScramCredential | None = None
        self._first_bare = ""
        self._server_first = ""
        self._nonce = ""

    def first(self, client_first: str) -> str:
        if not client_first.startswith(_GS2_HEADER):
            raise ScramError("client-first must start with 'n,,' (no channel binding, no authzid)")
        self._first_bare = client_first[len(_GS2_HEADER):]
        values = _attributes(self._first_bare, "nr")
        username = _unescape_name(values["n"])
        if not username or not values["r"]:
            raise ScramError("client-first needs a user name and a nonce")
        self.username = username
        self._credential = self._lookup(username)
        if self._credential is None:  # a decoy, stable per name, so probing learns nothing
            salt = _hmac(self._decoy_key, username.encode())[:SALT_BYTES]
            salt_b64, iterations = _b64(salt), ITERATIONS_DEFAULT
        else:
            salt_b64, iterations = _b64(self._credential.salt), self._credential.iterations
        self._nonce = values["r"] + self._nonce_extra
        self._server_first = f"r={self._nonce},s={salt_b64},i={iterations}"
        return self._server_first

    def final(self, client_final: str) -> str:
        """The server-final message; raises ScramError when the proof is wrong."""
        values = _attributes(client_final, "crp")
        if values["c"] != _CHANNEL_BINDING:
            raise ScramError("channel binding data does not match 'n,,'")
        if values["r"] != self._nonce:
            raise ScramError("nonce does not match the server's")
        proof = _b64decode(values["p"], "proof")
        credential = self._credential
        auth_message = f"{self._first_bare},{self._server_first},c={values['c']},r={values['r']}".encode()
        if credential is None or len(proof) != len(credential.stored_key):
            raise ScramError("wrong user name or password")
        signature = _hmac(credential.stored_key, auth_message)
        client_key = bytes(a ^ b for a, b in zip(proof, signature))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), credential.stored_key):
            raise ScramError("wrong user name or password")
        return f"v={_b64(_hmac(credential.server_key, auth_message))}"
