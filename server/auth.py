"""Bearer API keys with scopes. Keys are configured by their sha256 only; a leaked config file
does not leak a key.

- ``chat`` opens ``/v1``; ``admin`` opens ``/admin``.
- Keys are "on" as soon as one is configured (``TUTOR_API_KEYS`` or ``TUTOR_API_KEYS_FILE``):
  then no ``/v1`` route answers without one. With no keys the service is for this machine only:
  ``tutor serve`` refuses any other host (cli/main.py).
- ``TUTOR_ADMIN_KEY`` is a shortcut for one admin-only key; it does not switch chat keys on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import yaml
from fastapi import Request

from common.files import atomic_write_text
from common.settings import ApiKey, Settings
from server.errors import Forbidden, Unauthorized

log = logging.getLogger(__name__)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "tk-" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """Who is calling, and the limits that apply to them."""

    name: str
    scopes: frozenset[str]
    rpm: int = 0
    tpm: int = 0
    max_streams: int = 0
    models: tuple[str, ...] | None = None  # shell patterns of the model ids it may use; None: all

    def may_use(self, model_id: str) -> bool:
        return self.models is None or any(fnmatchcase(model_id, p) for p in self.models)


def load_key_file(path: Path) -> list[ApiKey]:
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entries = raw.get("keys", []) if isinstance(raw, dict) else raw
    return [ApiKey.model_validate(e) for e in entries]


def save_key_file(path: Path, keys: list[ApiKey]) -> None:
    """Atomic: a reader sees the old file or the new one, never half of one."""
    body = {"keys": [k.model_dump(exclude_none=True) for k in keys]}
    atomic_write_text(path, json.dumps(body, indent=2) + "\n", mode=0o600)


class KeyStore:
    """The configured keys. A key file is read again when it changes (checked at most once every
    ``RELOAD_EVERY`` seconds, on a request), so revoking a key needs no restart; a file that does
    not parse keeps the keys the store had, and says so in the log."""

    RELOAD_EVERY = 1.0

    def __init__(
        self,
        keys: list[ApiKey],
        settings: Settings,
        admin_key: str | None = None,
        key_file: Path | None = None,
    ):
        self._settings, self._static, self._admin_key = settings, list(keys), admin_key
        self._file, self._stamp, self._checked = key_file, self._file_stamp(key_file), 0.0
        self._build(self._static + (load_key_file(key_file) if key_file else []))
        self.anonymous = Principal(
            "anonymous",
            frozenset({"chat"}),
            settings.default_rpm,
            settings.default_tpm,
            settings.default_max_streams,
        )
        self.public_health = settings.public_health
        self.public_metrics = settings.public_metrics

    def _build(self, keys: list[ApiKey]) -> None:
        settings, by_hash = self._settings, {}
        for k in keys:
            by_hash[k.sha256] = Principal(
                name=k.name,
                scopes=frozenset(k.scopes),
                rpm=settings.default_rpm if k.rpm is None else k.rpm,
                tpm=settings.default_tpm if k.tpm is None else k.tpm,
                max_streams=settings.default_max_streams
                if k.max_streams is None
                else k.max_streams,
                models=None if k.models is None else tuple(k.models),
            )
        # a configured key file means keys, even when every key in it has been revoked: an
        # emptied file must never open the service to anyone
        self.keys_on = bool(by_hash) or self._file is not None
        if self._admin_key:
            by_hash.setdefault(hash_key(self._admin_key), Principal("admin", frozenset({"admin"})))
        self._by_hash = by_hash  # one assignment: a request sees the old keys or the new ones

    @staticmethod
    def _file_stamp(path: Path | None) -> tuple[int, int] | None:
        try:
            st = path.stat() if path else None
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size) if st else None

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if self._file is None or now - self._checked < self.RELOAD_EVERY:
            return
        self._checked = now
        stamp = self._file_stamp(self._file)
        if stamp == self._stamp:
            return
        try:
            keys = load_key_file(self._file)
        except (OSError, ValueError, yaml.YAMLError) as exc:  # pydantic's errors are ValueErrors
            log.error("key file %s not reloaded, the old keys stay: %s", self._file, exc)
            return
        finally:
            self._stamp = stamp
        self._build(self._static + keys)
        log.info("key file %s reloaded: %d keys", self._file, len(keys))

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyStore:
        admin = settings.admin_key.get_secret_value() if settings.admin_key else None
        return cls(list(settings.api_keys), settings, admin, settings.api_keys_file)

    @property
    def has_admin(self) -> bool:
        return any("admin" in p.scopes for p in self._by_hash.values())

    def authenticate(self, authorization: str | None) -> Principal | None:
        self._maybe_reload()
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self._by_hash.get(hash_key(token.strip()))

    def require(self, request: Request, scope: str, *, open_without_keys: bool) -> Principal:
        principal = self.authenticate(request.headers.get("authorization"))
        if principal is None:
            if open_without_keys and not self.keys_on:
                return self.anonymous
            raise Unauthorized("a valid API key is required (Authorization: Bearer ...)")
        if scope not in principal.scopes:
            raise Forbidden(f"this key lacks the {scope!r} scope", code="insufficient_scope")
        return principal


def requires(scope: str, *, open_without_keys: bool = True) -> Callable[[Request], Principal]:
    """A dependency: the caller's principal, or 401/403."""

    async def dependency(request: Request) -> Principal:
        store: KeyStore = request.app.state.keys
        principal = store.require(request, scope, open_without_keys=open_without_keys)
        request.state.principal = principal
        return principal

    return dependency


def requires_if(flag: str, scope: str) -> Callable[[Request], Principal | None]:
    """For /health and /metrics: open when the setting says so, else keyed."""

    async def dependency(request: Request) -> Principal | None:
        store: KeyStore = request.app.state.keys
        if getattr(store, flag):
            return None
        return store.require(request, scope, open_without_keys=False)

    return dependency
