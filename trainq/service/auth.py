"""Who is asking and what they may do: API tokens, session cookies, the worker token, roles, CSRF,
rate limits and the audit log.

Roles: an admin sees and manages everything; a user only their own jobs and checkpoints (another user's
job is answered 404, as if it did not exist); the worker token reaches only the worker routes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any

from flask import g, request, session
from sqlalchemy import select
from sqlalchemy.orm import Session

from trainq.service.context import db, services
from trainq.service.db import utcnow
from trainq.service.http import fail
from trainq.service.tables import ApiToken, AuditEntry, Role, User

TOKEN_PREFIX = "tq_"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}

# ---------------------------------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------------------------------

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # about 16 MiB and tens of milliseconds per check


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str | None) -> bool:
    if not stored:
        return False
    try:
        _, n, r, p, salt, digest = stored.split("$")
        computed = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed.hex(), digest)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(s: Session, name: str, role: str = Role.user.value, password: str | None = None) -> User:
    if s.scalar(select(User).where(User.name == name)) is not None:
        raise ValueError(f"user {name!r} exists")
    user = User(name=name, role=Role(role).value, password_hash=hash_password(password) if password else None)
    s.add(user)
    s.flush()
    return user


def create_token(s: Session, user: User, label: str = "") -> str:
    """Make an API token for a user; the token itself is returned once and only its hash is kept."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    s.add(ApiToken(user_id=user.id, label=label[:64], token_hash=hash_token(token)))
    s.flush()
    return token


def seed_admin(s: Session, token: str, name: str = "admin") -> User:
    """Make sure an admin exists who holds this token (TRAINQ_ADMIN_TOKEN, for automation)."""
    user = s.scalar(select(User).where(User.name == name))
    if user is None:
        user = create_user(s, name, Role.admin.value)
    if s.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token))) is None:
        s.add(ApiToken(user_id=user.id, label="TRAINQ_ADMIN_TOKEN", token_hash=hash_token(token)))
    s.flush()
    return user


# ---------------------------------------------------------------------------------------------------------------------
# The principal of a request
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    id: str
    name: str
    role: str
    via: str  # token | session

    @property
    def is_admin(self) -> bool:
        return self.role == Role.admin.value


def bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header[:7].lower() == "bearer " else None


def is_worker_token(token: str | None) -> bool:
    expected = services().settings.worker_token
    return bool(token and expected and hmac.compare_digest(token.encode(), expected.encode()))


TOKEN_CACHE_SECONDS = 10.0  # a token revoked in another service process stops working within this time


class TokenCache:
    """token hash -> (user id, name, role) for a few seconds: a job read then costs one query instead of two."""

    def __init__(self, size: int = 10_000):
        self._entries: dict[str, tuple[float, tuple[str, str, str]]] = {}
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[str, str, str] | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key: str, value: tuple[str, str, str]) -> None:
        with self._lock:
            if len(self._entries) >= self._size:
                self._entries.clear()
            self._entries[key] = (time.monotonic() + TOKEN_CACHE_SECONDS, value)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def user_for_token(token: str) -> User | None:
    return db().execute(select(User).join(ApiToken, ApiToken.user_id == User.id).where(
        ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))).scalar_one_or_none()


def principal_for_token(token: str) -> Principal | None:
    cache = services().tokens
    key = hash_token(token)
    known = cache.get(key)
    if known is None:
        user = user_for_token(token)
        if user is None:
            return None
        known = (user.id, user.name, user.role)
        cache.put(key, known)
    return Principal(*known, "token")


def principal() -> Principal | None:
    """The signed-in user of this request, from a bearer token or the session cookie; None if anonymous."""
    if "principal" in g:
        return g.principal
    found = None
    token = bearer()
    if token is not None and not is_worker_token(token):
        found = principal_for_token(token)
    elif session.get("uid"):
        user = db().get(User, session["uid"])
        if user is not None:
            found = Principal(user.id, user.name, user.role, "session")
    g.principal = found
    return found


def require_user() -> Principal:
    """401 for anonymous requests, 403 for the worker token; CSRF check for cookie-authenticated writes."""
    p = principal()
    if p is None:
        if is_worker_token(bearer()):
            fail(403, "forbidden", "the worker token reaches only the worker routes")
        fail(401, "unauthorized", "sign in, or send an API token as 'Authorization: Bearer TOKEN'",
             extra_headers={"WWW-Authenticate": "Bearer"})
    if p.via == "session" and request.method not in SAFE_METHODS:
        check_csrf()
    return p


def require_admin() -> Principal:
    p = require_user()
    if not p.is_admin:
        fail(403, "forbidden", "only an admin may do this")
    return p


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def check_csrf() -> None:
    given = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token", "")
    expected = session.get("csrf", "")
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        fail(403, "csrf", "missing or wrong CSRF token")


# ---------------------------------------------------------------------------------------------------------------------
# Rate limits (per service process) and the audit log
# ---------------------------------------------------------------------------------------------------------------------


class RateLimiter:
    """A sliding window of request times per key."""

    def __init__(self):
        self._hits: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def hit(self, key: str, limit: int, window: float = 60.0) -> float:
        """Count a request; return 0 if allowed, else the seconds until one is allowed again."""
        now = time.monotonic()
        with self._lock:
            hits = self._hits[key]
            while hits and hits[0] <= now - window:
                hits.popleft()
            if len(hits) >= limit:
                return hits[0] + window - now
            hits.append(now)
            return 0.0


def limit(key: str, per_minute: int) -> None:
    wait = services().limiter.hit(key, per_minute)
    if wait:
        fail(429, "rate_limited", f"too many requests; try again in {wait:.0f}s",
             extra_headers={"Retry-After": str(max(1, round(wait)))})


def audit(action: str, target: str, **detail: Any) -> None:
    """Record an action in the request's session; it commits with the action itself."""
    p = principal()
    db().add(AuditEntry(at=utcnow(), user_id=p.id if p else None, user_name=p.name if p else "anonymous",
                        action=action, target=target, detail=detail or None, ip=request.remote_addr))
