"""The quarantine store: each user's held mail, sealed at rest, indexed per user in bounded pages.

Two key-value maps (Faust tables in the worker, plain dicts in unit tests):
- index, every key starting with the recipient address:
    recipient                     directory: page range, held count, expiry order
    recipient NUL "p" page number a page: at most PAGE_ROWS entries in arrival order
                                  (id, tenant, status, dates, sealed index fields)
    recipient NUL "i" message id  number of the page holding that message
- messages: recipient NUL message id -> the sealed raw message.

Every value has a hard size bound (MAX_VALUE_BYTES for the index; the message
size limit for bodies) however much mail a user holds, and adding, closing or
expiring one message rewrites a constant number of values: a changelog record
never outgrows the broker's limit. Mutations must run while the worker
processes an event of that user (Faust writes table changes to the changelog
partition of the event being processed), which keeps all of a user's keys in
the partition of their address, with their verdicts and settings.

Messages arrive sealed (postwarden.held_mail); the store files them unopened
and opens them only to show or release them.

Stores written by earlier versions kept a user's whole index as one list under
the bare address (same row format): it is read as it is and rewritten into
pages by the user's next change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack
from prometheus_client import Counter

from postwarden.held_mail import HeldMessage, open_index, unpack_sealed
from postwarden.sealing import RetiredKeyError, Sealer, TamperedError

log = logging.getLogger(__name__)

TAMPERED = Counter("postwarden_quarantine_tampered_total",
                   "Quarantine entries that failed authentication (altered or moved)")
STORED = Counter("postwarden_quarantine_stored_total", "Messages added to the quarantine store")
EXPIRED = Counter("postwarden_quarantine_expired_total", "Quarantine entries removed at end of retention")

DAY = 86_400.0
PAGE_ROWS = 24
# One row: id (MAX_ID_BYTES) + tenant (64) + dates + sealed index (held_mail.INDEX_MAX_BYTES + 64).
MAX_ROW_BYTES = 4 * 1024 + 384
MAX_VALUE_BYTES = PAGE_ROWS * MAX_ROW_BYTES + 64
MAX_ID_BYTES = 128


class NotFound(KeyError):
    """No held message with that id for that user."""


@dataclass(frozen=True)
class Entry:
    message_id: str
    status: str  # held | released | deleted
    received_at: float
    expires_at: float
    sender: str = ""
    from_header: str = ""
    subject: str = ""
    date: float | None = None
    size: int = 0
    score: float = 0.0
    reason: str = ""
    categories: list[str] = field(default_factory=list)
    virus: str | None = None
    rules: list[dict] = field(default_factory=list)

    def matches(self, query: str) -> bool:
        q = query.lower()
        return any(q in s.lower() for s in (self.sender, self.from_header, self.subject, self.reason))


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(value: bytes) -> Any:
    return msgpack.unpackb(value, raw=False)


def _dir_key(recipient: str) -> bytes:
    return recipient.encode()


def _page_key(recipient: str, page: int) -> bytes:
    return f"{recipient}\0p{page}".encode()


def _locator_key(recipient: str, message_id: str) -> bytes:
    return f"{recipient}\0i{message_id}".encode()


def _message_key(recipient: str, message_id: str) -> bytes:
    return f"{recipient}\0{message_id}".encode()


def is_directory_key(key: bytes) -> bool:
    """Directory keys are the bare address: one per user holding anything."""
    return b"\0" not in key


class QuarantineStore:
    def __init__(self, index: MutableMapping, messages: MutableMapping, sealer: Sealer) -> None:
        self._index, self._messages, self._sealer = index, messages, sealer

    # -- stored values ----------------------------------------------------------------

    def _directory(self, recipient: str) -> dict | None:
        value = self._index.get(_dir_key(recipient))
        if not value:
            return None
        directory = _unpack(value)
        if isinstance(directory, list):  # the earlier one-value layout: one page of all rows
            return {"lo": 0, "hi": 1, "held": sum(r["st"] == "held" for r in directory),
                    "last_exp": 0.0, "ordered": False, "legacy": directory}
        return directory

    def _rows(self, recipient: str, directory: dict, page: int) -> list[dict]:
        legacy = directory.get("legacy")
        return legacy if legacy is not None else self._page(recipient, page)

    def _page(self, recipient: str, page: int) -> list[dict]:
        value = self._index.get(_page_key(recipient, page))
        return _unpack(value) if value else []

    def _locate(self, recipient: str, message_id: str) -> tuple[int, list[dict], dict] | None:
        value = self._index.get(_locator_key(recipient, message_id))
        if value is not None:
            page = _unpack(value)
            rows = self._page(recipient, page)
        else:
            directory = self._directory(recipient)
            if directory is None or "legacy" not in directory:
                return None
            page, rows = 0, directory["legacy"]
        row = next((r for r in rows if r["id"] == message_id), None)
        return (page, rows, row) if row is not None else None

    def _put(self, key: bytes, value: Any) -> None:
        data = _pack(value)
        if len(data) > MAX_VALUE_BYTES:  # a bug in the bounds above, not bad input
            raise ValueError(f"quarantine index value of {len(data)} bytes over {MAX_VALUE_BYTES}")
        self._index[key] = data

    def _drop(self, key: bytes) -> None:
        if key in self._index:
            del self._index[key]

    def _migrate(self, recipient: str) -> None:
        """Rewrites an index of the earlier one-value layout into pages (before any change)."""
        directory = self._directory(recipient)
        if directory is None or "legacy" not in directory:
            return
        fresh = {"lo": 0, "hi": 0, "held": 0, "last_exp": 0.0, "ordered": True}
        rows = directory["legacy"]
        for chunk in _pages_of(rows):
            page = fresh["hi"]
            fresh["hi"] += 1
            for row in chunk:
                self._put(_locator_key(recipient, row["id"]), page)
                fresh["held"] += row["st"] == "held"
                fresh["ordered"] = fresh["ordered"] and row["exp"] >= fresh["last_exp"]
                fresh["last_exp"] = max(fresh["last_exp"], row["exp"])
            self._put(_page_key(recipient, page), chunk)
        self._drop(_dir_key(recipient))
        if rows:
            self._put(_dir_key(recipient), fresh)

    # -- reading ----------------------------------------------------------------------

    def _entry(self, recipient: str, row: dict) -> Entry:
        base = {"message_id": row["id"], "status": row["st"], "received_at": row["at"],
                "expires_at": row["exp"]}
        if row.get("m") is None:
            return Entry(**base)
        try:
            meta = open_index(self._sealer, row["t"], recipient, row["id"], row["m"])
        except TamperedError:
            self._report_tampering(row)
            raise
        return Entry(**base, **{k: v for k, v in meta.items() if k in _META_FIELDS})

    @staticmethod
    def _report_tampering(row: dict) -> None:
        TAMPERED.inc()
        log.error("quarantine entry failed authentication",
                  extra={"message_id": row.get("id"), "tenant": row.get("t")})

    def _held_rows_newest_first(self, recipient: str, directory: dict) -> Iterator[list[dict]]:
        for page in range(directory["hi"] - 1, directory["lo"] - 1, -1):
            rows = [r for r in self._rows(recipient, directory, page) if r["st"] == "held"]
            if rows:
                rows.sort(key=lambda r: (r["at"], r["id"]), reverse=True)
                yield rows

    def _readable(self, recipient: str, rows: Iterable[dict]) -> Iterator[Entry]:
        for row in rows:
            try:
                yield self._entry(recipient, row)
            except (TamperedError, RetiredKeyError):
                continue  # reported; left out of lists

    def count(self, recipient: str) -> int:
        directory = self._directory(recipient)
        return directory["held"] if directory else 0

    def listing(self, recipient: str, query: str = "", offset: int = 0,
                limit: int = 25) -> tuple[int, list[Entry]]:
        """(number of held messages matching, one page of them newest first).

        Without a query only the pages covering the requested slice are opened;
        a search has to open every held entry (the fields are sealed).
        """
        directory = self._directory(recipient)
        if directory is None:
            return 0, []
        if query:
            matching = [e for rows in self._held_rows_newest_first(recipient, directory)
                        for e in self._readable(recipient, rows) if e.matches(query)]
            return len(matching), matching[offset:offset + limit]
        out: list[Entry] = []
        skip = offset
        for rows in self._held_rows_newest_first(recipient, directory):
            if len(out) >= limit:
                break
            if skip >= len(rows):
                skip -= len(rows)
                continue
            out.extend(self._readable(recipient, rows[skip:skip + limit - len(out)]))
            skip = 0
        return directory["held"], out

    def find(self, recipient: str, message_id: str) -> Entry | None:
        """The entry in any status (None if unknown); raises TamperedError."""
        found = self._locate(recipient, message_id)
        return self._entry(recipient, found[2]) if found else None

    def message(self, recipient: str, message_id: str) -> tuple[Entry, bytes]:
        """A held message and its raw bytes; NotFound, or TamperedError if altered."""
        found = self._locate(recipient, message_id)
        if found is None or found[2]["st"] != "held":
            raise NotFound(message_id)
        row = found[2]
        entry = self._entry(recipient, row)
        sealed = self._messages.get(_message_key(recipient, message_id))
        if sealed is None:
            raise NotFound(message_id)
        try:
            raw = self._sealer.open(row["t"], recipient, message_id, "body", unpack_sealed(sealed))
        except TamperedError:
            self._report_tampering(row)
            raise
        return entry, raw

    def due(self, now: float, recipients: Iterable[str] | None = None) -> Iterator[tuple[str, str, str]]:
        """(tenant, recipient, message id) of entries whose retention has ended, oldest pages first.

        While a user's expiry times grow with arrival (the usual case) the walk
        stops at the first page with nothing due.
        """
        if recipients is None:
            recipients = [k.decode() for k in list(self._index.keys()) if is_directory_key(k)]
        for recipient in recipients:
            directory = self._directory(recipient)
            if directory is None:
                continue
            for page in range(directory["lo"], directory["hi"]):
                rows = self._rows(recipient, directory, page)
                due = [r for r in rows if r["exp"] <= now]
                yield from ((r["t"], recipient, r["id"]) for r in due)
                if rows and not due and directory["ordered"]:
                    break

    # -- changes (inside stream processing) -----------------------------------------------
    #
    # A change rewrites up to three index values (page, locator, directory). Its outcome is
    # first written into the directory as an intent, then applied, then the directory is
    # written without it: a worker killed in between leaves the intent, and the user's next
    # change (the replay of the interrupted one comes first) finishes it before anything else.

    def settle(self, recipient: str) -> None:
        """Finishes a change of this user that a stopped worker left halfway."""
        self._settled(recipient)

    def _settled(self, recipient: str) -> dict | None:
        self._migrate(recipient)
        directory = self._directory(recipient)
        if directory is not None and "intent" in directory:
            self._apply(recipient, directory)
            directory = self._directory(recipient)
        return directory

    def _change(self, recipient: str, directory: dict, intent: dict) -> None:
        directory = {**directory, "intent": intent}
        self._put(_dir_key(recipient), directory)
        self._apply(recipient, directory)

    def _apply(self, recipient: str, directory: dict) -> None:
        """Brings page and locator to what the directory's intent says (idempotent), then clears it."""
        intent = directory.pop("intent", None) or {}
        op, mid, page = intent.get("op"), intent.get("id"), intent.get("page")
        rows = self._page(recipient, page) if op else []
        if op == "add":
            if not any(r["id"] == mid for r in rows):
                rows.append(intent["row"])
            self._put(_page_key(recipient, page), rows)
            self._put(_locator_key(recipient, mid), page)
        elif op == "close":
            for row in rows:
                if row["id"] == mid:
                    row["st"], row["m"] = intent["status"], None
            if rows:
                self._put(_page_key(recipient, page), rows)
        elif op == "expire":
            rows = [r for r in rows if r["id"] != mid]
            if rows:
                self._put(_page_key(recipient, page), rows)
            else:
                self._drop(_page_key(recipient, page))
            self._drop(_locator_key(recipient, mid))
        if directory["lo"] < directory["hi"]:
            self._put(_dir_key(recipient), directory)
        else:
            self._drop(_dir_key(recipient))

    def add(self, held: HeldMessage, retention_days: int, now: float) -> bool:
        """Files a sealed quarantined message; False if it is already there (replay) or unfit."""
        recipient = held.recipient
        if len(held.message_id.encode()) > MAX_ID_BYTES or "\0" in recipient:
            log.error("quarantined message refused: malformed id",
                      extra={"message_id": held.message_id[:64], "tenant": held.tenant})
            return False
        directory = self._settled(recipient)
        if _locator_key(recipient, held.message_id) in self._index:
            return False
        directory = directory or {"lo": 0, "hi": 0, "held": 0, "last_exp": 0.0, "ordered": True}
        expires = now + retention_days * DAY
        page = directory["hi"] - 1
        rows = self._page(recipient, page) if page >= directory["lo"] else []
        if not rows or len(rows) >= PAGE_ROWS or len(_pack(rows)) + MAX_ROW_BYTES > MAX_VALUE_BYTES:
            page = directory["hi"]
            directory["hi"] += 1
        row = {"id": held.message_id, "t": held.tenant, "st": "held", "at": held.received_at,
               "exp": expires, "m": unpack_sealed(held.index)}
        # A shortened retention makes expiry times go down: the sweep then reads every page.
        directory["ordered"] = directory["ordered"] and expires >= directory["last_exp"]
        directory["last_exp"] = max(directory["last_exp"], expires)
        directory["held"] += 1
        self._messages[_message_key(recipient, held.message_id)] = held.body
        self._change(recipient, directory, {"op": "add", "id": held.message_id, "page": page, "row": row})
        STORED.inc()
        return True

    def close(self, recipient: str, message_id: str, status: str) -> None:
        """Marks a held message released or deleted and destroys its sealed content.

        The entry stays (without content) until the retention ends, so a second
        click on a release link can say it was already released.
        """
        directory = self._settled(recipient)
        found = self._locate(recipient, message_id)
        if directory is not None and found is not None and found[2]["st"] == "held":
            directory["held"] -= 1
            self._change(recipient, directory, {"op": "close", "id": message_id, "page": found[0],
                                                "status": status})
        self._messages.pop(_message_key(recipient, message_id), None)

    def expire(self, recipient: str, message_id: str, now: float) -> bool:
        directory = self._settled(recipient)
        found = self._locate(recipient, message_id)
        if directory is None or found is None or found[2]["exp"] > now:
            return False
        page, rows, row = found
        if row["st"] == "held":
            directory["held"] -= 1
        if len(rows) == 1:
            # The page goes: the directory forgets leading pages that are gone, each page
            # number once in the user's lifetime (O(1) amortized).
            while directory["lo"] < directory["hi"] and (
                    directory["lo"] == page or _page_key(recipient, directory["lo"]) not in self._index):
                directory["lo"] += 1
        self._messages.pop(_message_key(recipient, message_id), None)
        self._change(recipient, directory, {"op": "expire", "id": message_id, "page": page})
        EXPIRED.inc()
        return True

    def purge(self, recipient: str) -> int:
        """Removes everything of a user (their account was removed); returns the entries removed."""
        directory = self._settled(recipient)
        if directory is None:
            return 0
        removed = 0
        for page in range(directory["lo"], directory["hi"]):
            for row in self._page(recipient, page):
                self._drop(_locator_key(recipient, row["id"]))
                self._messages.pop(_message_key(recipient, row["id"]), None)
                removed += 1
            self._drop(_page_key(recipient, page))
        self._drop(_dir_key(recipient))
        return removed


def _pages_of(rows: list[dict]) -> Iterator[list[dict]]:
    """Earlier rows in pages within both bounds; index fields too large for any page are dropped."""
    page: list[dict] = []
    for row in rows:
        if len(_pack([row])) > MAX_VALUE_BYTES:
            row = {**row, "m": None}
        if page and (len(page) >= PAGE_ROWS or len(_pack([*page, row])) > MAX_VALUE_BYTES):
            yield page
            page = []
        page.append(row)
    if page:
        yield page


_META_FIELDS = {f for f in Entry.__dataclass_fields__} - {"message_id", "status", "received_at", "expires_at"}


def entry_json(entry: Entry) -> dict:
    return asdict(entry)
