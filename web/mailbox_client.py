"""Calls from `postwarden web` to the workers' mailbox API (streams.mailbox_api).

Any worker answers (it forwards to the partition owner); a 503 during a
rebalance is retried with a short backoff before the user sees an error.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout

from postwarden import internal_api
from postwarden.keyring import Keyring

RETRIES = 20


class MailboxUnavailable(Exception):
    """No worker could answer (all down, or rebalancing for too long)."""


class SessionEnded(Exception):
    """The user's sessions were ended (sign-out everywhere, new password)."""


class MailboxClient:
    def __init__(self, base_url: str, keyring: Keyring) -> None:
        self._base = base_url.rstrip("/")
        self._token = internal_api.token(keyring)
        self._http: ClientSession | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def _call(self, method: str, tenant: str, address: str, parts: tuple[str, ...],
                    body: dict | None = None, params: dict | None = None,
                    session_version: int | None = None) -> tuple[int, Any]:
        if self._http is None:
            self._http = ClientSession(timeout=ClientTimeout(total=30))
        query = {"tenant": tenant, **(params or {})}
        if session_version is not None:
            query["sv"] = str(session_version)
        url = self._base + internal_api.path(address, *parts)
        delay = 0.1
        for _ in range(RETRIES):
            try:
                async with self._http.request(method, url, params=query, json=body,
                                              headers={internal_api.HEADER: self._token}) as resp:
                    data = await resp.json(content_type=None)
                    if resp.status == 503:
                        raise MailboxUnavailable(data.get("error", "unavailable"))
                    if resp.status == 401:
                        raise SessionEnded()
                    return resp.status, data
            except (ClientError, MailboxUnavailable, asyncio.TimeoutError, ValueError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise MailboxUnavailable("the mail workers did not answer")

    async def user(self, tenant: str, address: str, session_version: int | None = None) -> dict:
        return (await self._call("GET", tenant, address, ("user",), session_version=session_version))[1]

    async def verify(self, tenant: str, address: str, password: str) -> dict:
        return (await self._call("POST", tenant, address, ("verify",), {"password": password}))[1]

    async def command(self, tenant: str, address: str, op: str, settings: dict | None = None,
                      password_hash: str | None = None, session_version: int | None = None) -> dict:
        body = {"command_id": uuid.uuid4().hex, "op": op, "settings": settings or {},
                "password_hash": password_hash}
        return (await self._call("POST", tenant, address, ("commands",), body,
                                 session_version=session_version))[1]

    async def quarantine(self, tenant: str, address: str, query: str, offset: int, limit: int,
                         session_version: int | None = None) -> dict:
        return (await self._call("GET", tenant, address, ("quarantine",),
                                 params={"q": query, "offset": str(offset), "limit": str(limit)},
                                 session_version=session_version))[1]

    async def message(self, tenant: str, address: str, message_id: str,
                      session_version: int | None = None) -> tuple[dict, bytes] | None:
        """(entry, raw) of a held message; None if the user has no such held message."""
        status, data = await self._call("GET", tenant, address, ("quarantine", message_id),
                                        session_version=session_version)
        if status != 200:
            return None
        return data["entry"], base64.b64decode(data["raw"])

    async def act(self, tenant: str, address: str, message_id: str, op: str,
                  session_version: int | None = None) -> dict:
        return (await self._call("POST", tenant, address, ("quarantine", message_id, op), {},
                                 session_version=session_version))[1]
