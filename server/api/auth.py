"""API keys with roles: hashing, configuration, verification and the per-method role table.

Keys are never stored or logged in clear: the config holds ``sha256:<hex>`` (for long random keys) or a
salted ``pbkdf2_sha256:...`` / ``scrypt:...`` hash; presented keys are compared in constant time. A slow
salted hash is computed only when no cheaper answer exists (see :class:`KeyRing`), so a wrong key is cheap to
refuse. The gRPC interceptor that applies these checks, and the per-host budget of failures that bounds the
slow hashes a client can force, live in ``server/api/interceptors.py`` and ``server/api/limits.py``.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import ipaddress
import secrets
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any

import grpc

# Roles and the RPCs each role may call; every other method (present or future) needs ``admin``.
ROLE_INGEST = "ingest"
ROLE_DECIDE = "decide"
ROLE_ADMIN = "admin"
ROLES: tuple[str, ...] = (ROLE_INGEST, ROLE_DECIDE, ROLE_ADMIN)
_ALL_ROLES = frozenset(ROLES)

SERVICE_PREFIX = "/onramp.v1.Onramp/"
METHOD_ROLES: dict[str, str] = {
    "IngestEvents": ROLE_INGEST,
    "IngestEventBatches": ROLE_INGEST,
    "ReportOutcome": ROLE_INGEST,
    "SetConsent": ROLE_INGEST,
    "GetNextStep": ROLE_DECIDE,
    "EraseUser": ROLE_ADMIN,
    "ExportUserData": ROLE_ADMIN,
    "GetUserProfile": ROLE_ADMIN,
}

# Services that answer without a key: health checks and server reflection.
OPEN_SERVICE_PREFIXES: tuple[str, ...] = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

API_KEY_HEADER = "x-api-key"
AUTHORIZATION_HEADER = "authorization"
MSG_MISSING_KEY = "missing API key: send metadata x-api-key (or authorization: Bearer <key>)"
MSG_UNKNOWN_KEY = "unknown API key"

PBKDF2_ITERATIONS = 200_000
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
# Refused keys remembered (by SHA-256) so a repeated wrong key costs no slow hash: 32 bytes each, LRU.
REFUSED_CACHE_SIZE = 4096


class AuthConfigError(ValueError):
    """A bad ``[auth]`` setting; the message starts with the key at fault."""


def required_role(method: str) -> str | None:
    """The role a full gRPC method name (``/pkg.Service/Method``) needs, or None for open services.

    >>> required_role("/onramp.v1.Onramp/GetNextStep"), required_role("/grpc.health.v1.Health/Check")
    ('decide', None)
    """
    if method.startswith(OPEN_SERVICE_PREFIXES):
        return None
    if method.startswith(SERVICE_PREFIX):
        return METHOD_ROLES.get(method[len(SERVICE_PREFIX):], ROLE_ADMIN)
    return ROLE_ADMIN


def generate_key() -> str:
    """A new random API key (32 bytes of entropy, URL-safe text) for ``onramp hash-key --generate``."""
    return "onr_" + secrets.token_urlsafe(32)


def hash_key(key: str, scheme: str = "sha256") -> str:
    """The config form of ``key``: ``sha256:<hex>``, ``pbkdf2_sha256:<iter>:<salt>:<hex>`` or ``scrypt:...``.

    Plain sha256 suits generated high-entropy keys; the salted schemes suit human-chosen keys.
    """
    if not key:
        raise ValueError("key: must not be empty")
    raw = key.encode("utf-8")
    if scheme == "sha256":
        return "sha256:" + hashlib.sha256(raw).hexdigest()
    salt = secrets.token_bytes(16)
    if scheme == "pbkdf2":
        digest = hashlib.pbkdf2_hmac("sha256", raw, salt, PBKDF2_ITERATIONS)
        return f"pbkdf2_sha256:{PBKDF2_ITERATIONS}:{salt.hex()}:{digest.hex()}"
    if scheme == "scrypt":
        digest = hashlib.scrypt(raw, salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
        return f"scrypt:{SCRYPT_N}:{SCRYPT_R}:{SCRYPT_P}:{salt.hex()}:{digest.hex()}"
    raise ValueError(f"scheme: must be one of sha256, pbkdf2, scrypt (got {scheme!r})")


def _hex(value: str, where: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise AuthConfigError(f"{where}: expected hexadecimal digits") from None


@dataclass(frozen=True, slots=True)
class KeyHash:
    """A parsed stored hash; ``matches`` recomputes the digest of a presented key and compares in constant time."""

    scheme: str
    digest: bytes
    salt: bytes = b""
    params: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str, where: str = "hash") -> "KeyHash":
        """Parse the config form written by :func:`hash_key`; errors name ``where``."""
        parts = text.strip().split(":")
        scheme = parts[0]
        try:
            if scheme == "sha256" and len(parts) == 2:
                if len(parts[1]) != 64:
                    raise AuthConfigError(f"{where}: sha256 digest must be 64 hex characters")
                return cls("sha256", _hex(parts[1], where))
            if scheme == "pbkdf2_sha256" and len(parts) == 4:
                iterations = int(parts[1])
                if iterations < 1:
                    raise AuthConfigError(f"{where}: pbkdf2 iterations must be positive")
                return cls("pbkdf2_sha256", _hex(parts[3], where), _hex(parts[2], where), (iterations,))
            if scheme == "scrypt" and len(parts) == 6:
                n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
                return cls("scrypt", _hex(parts[5], where), _hex(parts[4], where), (n, r, p))
        except ValueError as exc:
            if isinstance(exc, AuthConfigError):
                raise
            raise AuthConfigError(f"{where}: bad number in hash ({exc})") from None
        raise AuthConfigError(
            f"{where}: expected 'sha256:<64 hex>', 'pbkdf2_sha256:<iter>:<salt>:<hex>' or "
            "'scrypt:<n>:<r>:<p>:<salt>:<hex>' (make one with `onramp hash-key`)"
        )

    def compute(self, key: str) -> bytes:
        """The digest of ``key`` under this hash's scheme, salt and parameters."""
        raw = key.encode("utf-8")
        if self.scheme == "sha256":
            return hashlib.sha256(raw).digest()
        if self.scheme == "pbkdf2_sha256":
            return hashlib.pbkdf2_hmac("sha256", raw, self.salt, self.params[0])
        n, r, p = self.params
        return hashlib.scrypt(raw, salt=self.salt, n=n, r=r, p=p, dklen=len(self.digest),
                              maxmem=256 * 1024 * 1024)

    def matches(self, key: str) -> bool:
        """True when ``key`` hashes to this digest (constant-time comparison)."""
        return hmac.compare_digest(self.compute(key), self.digest)

    @property
    def slow(self) -> bool:
        """True for the salted schemes (pbkdf2, scrypt): tens of milliseconds of CPU per check."""
        return self.scheme != "sha256"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One configured key: a name (safe to log), its stored hash and the roles it grants."""

    name: str
    hash: KeyHash
    roles: frozenset[str]


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """The ``[auth]`` section: the keys and whether they are enforced (default: when any key is configured)."""

    keys: tuple[ApiKey, ...] = ()
    enabled: bool = False

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any] | None) -> "AuthConfig":
        """Validate an ``[auth]`` table; errors name the key at fault, e.g. ``[auth] keys[1].roles``."""
        section = dict(section or {})
        unknown = set(section) - {"keys", "enabled"}
        if unknown:
            raise AuthConfigError(f"[auth] {sorted(unknown)[0]}: unknown key (expected keys, enabled)")
        raw_keys = section.get("keys", [])
        if not isinstance(raw_keys, list):
            raise AuthConfigError("[auth] keys: expected a list of {name, hash, roles} tables")
        keys: list[ApiKey] = []
        names: set[str] = set()
        for i, entry in enumerate(raw_keys):
            where = f"[auth] keys[{i}]"
            if not isinstance(entry, Mapping):
                raise AuthConfigError(f"{where}: expected a table {{name, hash, roles}}")
            extra = set(entry) - {"name", "hash", "roles"}
            if extra:
                raise AuthConfigError(f"{where}.{sorted(extra)[0]}: unknown key (expected name, hash, roles)")
            name = entry.get("name")
            if not isinstance(name, str) or not name:
                raise AuthConfigError(f"{where}.name: expected a non-empty string")
            if name in names:
                raise AuthConfigError(f"{where}.name: duplicate key name {name!r}")
            names.add(name)
            hash_text = entry.get("hash")
            if not isinstance(hash_text, str):
                raise AuthConfigError(f"{where}.hash: expected a string such as 'sha256:<hex>'")
            roles = entry.get("roles")
            if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
                raise AuthConfigError(f"{where}.roles: expected a non-empty list of {list(ROLES)}")
            bad = [r for r in roles if r not in ROLES]
            if bad:
                raise AuthConfigError(f"{where}.roles: unknown role {bad[0]!r} (expected one of {list(ROLES)})")
            keys.append(ApiKey(name, KeyHash.parse(hash_text, f"{where}.hash"), frozenset(roles)))
        enabled = section.get("enabled", bool(keys))
        if not isinstance(enabled, bool):
            raise AuthConfigError("[auth] enabled: expected true or false")
        if enabled and not keys:
            raise AuthConfigError("[auth] enabled: true needs at least one entry in [auth] keys")
        return cls(tuple(keys), enabled)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key name (or ``peer:<host>`` without auth) and the roles held."""

    name: str
    roles: frozenset[str]
    authenticated: bool


class AuthError(Exception):
    """A rejected call: the gRPC status code and a message safe to send and log (never the key)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def presented_key(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The API key from call metadata: ``x-api-key``, else ``authorization: Bearer <key>``; None if absent."""
    bearer = None
    for name, value in metadata or ():
        lname = name.lower()
        if isinstance(value, bytes):
            continue
        if lname == API_KEY_HEADER and value:
            return value.strip()
        if lname == AUTHORIZATION_HEADER and bearer is None:
            scheme, _, rest = value.strip().partition(" ")
            if scheme.lower() == "bearer" and rest.strip():
                bearer = rest.strip()
    return bearer


def _fingerprint(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class KeyRing:
    """Verifies presented keys against the configured hashes and checks roles.

    A check runs a slow salted hash only when nothing cheaper can answer: keys are remembered by their
    SHA-256 (in memory only) once verified and once refused (the last ``refused_cache_size``), and a salted
    hash whose key was verified is not tried for other keys (a hash has one key), so once every salted key
    has been presented an unknown key costs a few SHA-256s. Slow hashes run on one thread of their own, one
    per distinct key at a time (:meth:`authorize_async`).
    """

    def __init__(self, config: AuthConfig, refused_cache_size: int = REFUSED_CACHE_SIZE) -> None:
        self.config = config
        # The hashes a new key is checked against, in config order: every fast one, the slow ones not verified.
        self._candidates: tuple[ApiKey, ...] = config.keys
        self._verified: dict[bytes, ApiKey] = {}  # at most one entry per configured key
        self._refused: OrderedDict[bytes, None] = OrderedDict()
        self._refused_size = refused_cache_size
        self._pending: dict[bytes, asyncio.Future[ApiKey | None]] = {}  # slow checks running, by fingerprint
        self._lock = threading.Lock()
        self._hasher: ThreadPoolExecutor | None = None

    @property
    def enabled(self) -> bool:
        """True when calls must carry a valid key."""
        return self.config.enabled

    def lookup(self, key: str) -> ApiKey | None:
        """The configured key matching ``key``, or None. Every candidate hash is tried (the same work
        whichever matches); the answer is remembered."""
        fingerprint = _fingerprint(key)
        with self._lock:
            known = self._verified.get(fingerprint)
            if known is not None:
                return known
            if fingerprint in self._refused:
                self._refused.move_to_end(fingerprint)
                return None
            candidates = self._candidates
        found = None
        for candidate in candidates:
            if candidate.hash.matches(key) and found is None:
                found = candidate
        with self._lock:
            if found is not None:
                self._verified[fingerprint] = found
                if found.hash.slow:
                    self._candidates = tuple(c for c in self._candidates if c is not found)
            elif self._refused_size > 0:
                self._refused[fingerprint] = None
                while len(self._refused) > self._refused_size:
                    self._refused.popitem(last=False)
        return found

    @property
    def has_slow_hashes(self) -> bool:
        """True when some configured hash is salted (pbkdf2/scrypt) and so costly to verify."""
        return any(k.hash.slow for k in self.config.keys)

    def is_cached(self, key: str) -> bool:
        """True when ``key`` was verified before (its check is then a dictionary lookup)."""
        with self._lock:
            return _fingerprint(key) in self._verified

    def refused_count(self) -> int:
        """Refused keys remembered now (at most ``refused_cache_size``)."""
        with self._lock:
            return len(self._refused)

    def slow_hash_due(self, key: str) -> bool:
        """True when checking ``key`` needs a slow salted hash: neither verified nor refused before, and some
        salted hash is not verified yet."""
        fingerprint = _fingerprint(key)
        with self._lock:
            return fingerprint not in self._verified and fingerprint not in self._refused \
                and any(c.hash.slow for c in self._candidates)

    async def lookup_async(self, key: str, before_hash: Callable[[], None] | None = None) -> ApiKey | None:
        """:meth:`lookup`, with a slow salted hash computed on the key-hashing thread. Concurrent checks of
        one key share one computation; ``before_hash()`` is called just before a new one starts and may
        raise to stop it."""
        if not self.slow_hash_due(key):
            return self.lookup(key)
        fingerprint = _fingerprint(key)
        loop = asyncio.get_running_loop()
        pending = self._pending.get(fingerprint)
        if pending is None or pending.get_loop() is not loop:
            if before_hash is not None:
                before_hash()
            pending = loop.run_in_executor(self._executor(), self.lookup, key)
            self._pending[fingerprint] = pending
            pending.add_done_callback(lambda done: self._forget_pending(fingerprint, done))
        return await asyncio.shield(pending)

    def _forget_pending(self, fingerprint: bytes, done: asyncio.Future[ApiKey | None]) -> None:
        if self._pending.get(fingerprint) is done:
            del self._pending[fingerprint]

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._hasher is None:
                self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onramp-key-hash")
            return self._hasher

    def close(self) -> None:
        """Stop the key-hashing thread; checks still waiting for it are cancelled."""
        with self._lock:
            hasher, self._hasher = self._hasher, None
        if hasher is not None:
            hasher.shutdown(wait=False, cancel_futures=True)

    def authorize(self, method: str, metadata: Iterable[tuple[str, Any]] | None, peer: str = "") -> Principal:
        """The caller of ``method``, or raise :class:`AuthError` (UNAUTHENTICATED / PERMISSION_DENIED)."""
        key = presented_key(metadata)
        return self._decide(method, key, self.lookup(key) if key and self._needs_key(method) else None, peer)

    def authorize_now(self, method: str, metadata: Iterable[tuple[str, Any]] | None,
                      peer: str = "") -> Principal | None:
        """:meth:`authorize` when it needs no slow salted hash (see :meth:`slow_hash_due`), else None: then use
        :meth:`authorize_async`. Lets the interceptor answer most calls without a coroutine of its own."""
        key = presented_key(metadata)
        if key and self._needs_key(method):
            if self.slow_hash_due(key):
                return None
            return self._decide(method, key, self.lookup(key), peer)
        return self._decide(method, key, None, peer)

    async def authorize_async(self, method: str, metadata: Iterable[tuple[str, Any]] | None, peer: str = "",
                              before_hash: Callable[[], None] | None = None) -> Principal:
        """:meth:`authorize` without blocking the event loop on salted hashes (used by the interceptor);
        ``before_hash`` as in :meth:`lookup_async`."""
        key = presented_key(metadata)
        api_key = await self.lookup_async(key, before_hash) if key and self._needs_key(method) else None
        return self._decide(method, key, api_key, peer)

    def _needs_key(self, method: str) -> bool:
        return self.enabled and required_role(method) is not None

    def _decide(self, method: str, key: str | None, api_key: ApiKey | None, peer: str) -> Principal:
        if not self.enabled:
            return Principal("peer:" + peer_host(peer), _ALL_ROLES, False)
        role = required_role(method)
        if role is None:
            return Principal("peer:" + peer_host(peer), frozenset(), False)
        if not key:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, MSG_MISSING_KEY)
        if api_key is None:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, MSG_UNKNOWN_KEY)
        if role not in api_key.roles:
            name = method.rsplit("/", 1)[-1]
            raise AuthError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"API key {api_key.name!r} lacks role {role!r} needed for {name} "
                f"(it has {sorted(api_key.roles)})",
            )
        return Principal(api_key.name, api_key.roles, True)


def peer_host(peer: str) -> str:
    """The host part of a gRPC peer string (``ipv4:1.2.3.4:555`` -> ``1.2.3.4``, ``ipv6:[::1]:5`` -> ``::1``)."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and rest:
        host, _, _port = rest.rpartition(":")
        return host.strip("[]") or rest
    return peer or "unknown"


def peer_network(peer: str) -> str:
    """The client host a gRPC peer string stands for, as the failed-authentication budget counts hosts: the
    IPv4 address, or the /64 network of an IPv6 address (a single host can use any address of its /64).

    >>> peer_network("ipv4:10.1.2.3:555"), peer_network("ipv6:[2001:db8:1:2:a:b:c:d]:5"), peer_network("ipv6:[::1]:5")
    ('10.1.2.3', '2001:db8:1:2::/64', '::1')
    """
    host = peer_host(peer)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        if not address.is_loopback:
            return str(ipaddress.IPv6Network((address, 64), strict=False))
    return host


def is_loopback_host(host: str) -> bool:
    """True for hosts only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host_port(address: str) -> tuple[str, str]:
    """Split ``host:port`` / ``[v6]:port`` into host and port text."""
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, ""
    return host.strip("[]"), port


class InsecureBindError(RuntimeError):
    """Refusal to serve a non-loopback address without API keys."""


def check_bind_allowed(address: str, auth_enabled: bool, allow_insecure_no_auth: bool) -> bool:
    """Raise :class:`InsecureBindError` when ``address`` is reachable from other machines and auth is off.

    Returns True when the server will run without auth (the caller logs a loud WARNING), False otherwise.
    """
    if auth_enabled:
        return False
    host, _ = split_host_port(address)
    if not is_loopback_host(host) and not allow_insecure_no_auth:
        raise InsecureBindError(
            f"refusing to listen on {address} without authentication: anyone who can reach it could read "
            "and erase user data. Configure API keys in [auth] keys (see `onramp hash-key` and "
            "docs/security.md) or pass --allow-insecure-no-auth to accept the risk."
        )
    return True


def hash_key_main(argv: Sequence[str] | None = None, stdin: IO[str] | None = None,
                  stdout: IO[str] | None = None) -> int:
    """``onramp hash-key``: print the config hash of a key read from stdin (or of a new key with --generate).

    The clear key is read from stdin (first line, surrounding whitespace removed) so it never appears in
    the process list or shell history; with ``--generate`` a new key is printed once, then its hash.
    """
    parser = argparse.ArgumentParser(prog="onramp hash-key", description=hash_key_main.__doc__)
    parser.add_argument("--scheme", choices=("sha256", "pbkdf2", "scrypt"), default="sha256",
                        help="sha256 for generated random keys (default); pbkdf2/scrypt add a salt and work factor")
    parser.add_argument("--generate", action="store_true", help="make a new random key instead of reading one")
    args = parser.parse_args(argv)
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    if args.generate:
        key = generate_key()
        stdout.write(f"key:  {key}\n")
        stdout.write(f"hash: {hash_key(key, args.scheme)}\n")
        return 0
    key = stdin.readline().strip()
    if not key:
        sys.stderr.write("onramp hash-key: no key on stdin (pipe the key in, or use --generate)\n")
        return 2
    stdout.write(hash_key(key, args.scheme) + "\n")
    return 0


__all__ = [
    "ApiKey", "AuthConfig", "hash_key_main", "AuthConfigError", "AuthError", "InsecureBindError", "KeyHash", "KeyRing",
    "METHOD_ROLES", "Principal", "ROLES", "check_bind_allowed", "generate_key", "hash_key",
    "is_loopback_host", "peer_host", "peer_network", "presented_key", "required_role",
]


if __name__ == "__main__":
    raise SystemExit(hash_key_main())
