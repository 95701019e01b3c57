"""The durable turn log: every captured turn and its outcome, as append-only Parquet segments. The one writer of it.

Layout under the log's root (a local path or any pyarrow filesystem URI, e.g. s3://bucket/run/turnlog):

    turns/<unix ns>-<random>.parquet      one segment per append: the full turns (x, y token ids, o, version, ...)
    outcomes/<unix ns>-<random>.parquet   (turn_id, outcome, count): "trained", "dropped:<reason>", or
                                          "rejected" (count = trained turns moved to dropped:rejected; no id)
    users/<unix ns>-<random>.parquet      (user_hash, event, turns_removed): "deleted" (the tombstone of a
                                          deletion), "opt_out", "opt_in"; the latest event of a user decides

Nothing is rewritten except by a deletion (`forget_user`: every segment holding the user's turns is written again
without them, under the same time, and the old one removed). A turn's outcome is a separate small record keyed by
its id, and the first outcome of a turn is the one that counts (ids are idempotent: a turn trained by one queue incarnation and offered again by a
rebuilt one is not trained twice). A segment is written under a temporary name and moved into place, so a reader
never sees half a segment. Segments older than `retention_s` (by the time in their name) are deleted by `prune`.

Who writes: the reply ledger appends a turn before it hands it to the queue (that is the moment a turn is
acknowledged), a replay appends each chunk it offers, and the queue appends outcomes. Who reads: a restarted queue
(`state()`: the open turns, the counts), a queue recovering a payload lost with its owner (`turns(ids)`), and
`--source <log root>` (`turns()`). The privacy rules live here too: turns arrive PII-redacted (the ledger and a
replay redact them before anything stores them, core/redact.py), a user's turns can be deleted (leaving a
tombstone that names the user only by a SHA-256 hash), and who opted out of capture is kept here so a restarted
ledger still honours it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hsd_ray.core.turns import Turn

TURNS, OUTCOMES, USERS = "turns", "outcomes", "users"
DELETED, OPT_OUT, OPT_IN = "deleted", "opt_out", "opt_in"
TRAINED, REJECTED = "trained", "rejected"
_TURN_SCHEMA = pa.schema([
    ("turn_id", pa.string()), ("user_id", pa.string()), ("adapter_id", pa.string()), ("context", pa.string()),
    ("reply", pa.string()), ("followup", pa.string()), ("reply_token_ids", pa.list_(pa.int64())),
    ("reply_logprobs", pa.list_(pa.float64())), ("reply_finished", pa.bool_()), ("policy_version", pa.int64()),
    ("replied_at", pa.float64()), ("followup_at", pa.float64()), ("source", pa.string()), ("logged_at", pa.float64()),
])
_OUTCOME_SCHEMA = pa.schema([("turn_id", pa.string()), ("outcome", pa.string()), ("count", pa.int64()),
                             ("at", pa.float64())])
_USER_SCHEMA = pa.schema([("user_hash", pa.string()), ("event", pa.string()), ("turns_removed", pa.int64()),
                          ("at", pa.float64())])


def user_hash(user_id: str) -> str:
    """How the log names a user outside their turns (tombstones, opt-outs): a user id may itself be an email."""
    return hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()


def is_turn_log(path: str) -> bool:
    """`path` is a turn log's root (it holds a turns/ folder), e.g. a `--source` to replay."""
    try:
        fs, root = filesystem(path)
        return fs.get_file_info(f"{root}/{TURNS}").type == pafs.FileType.Directory
    except (OSError, ValueError):
        return False


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI such as s3://bucket/prefix."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


@dataclass
class LogState:
    """What a rebuilt queue needs: the turns with no outcome yet (oldest first), the counts so far, every id seen."""

    open_turns: list[Turn] = field(default_factory=list)
    captured: int = 0
    trained: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason → turns
    known: set[str] = field(default_factory=set)


class TurnLog:
    """Append-only Parquet segments of turns and outcomes under `uri` (see the module docstring)."""

    def __init__(self, uri: str, retention_s: float = 7 * 86400.0):
        self.uri, self.retention_s = uri, retention_s
        self.fs, self.root = filesystem(uri)
        for sub in (TURNS, OUTCOMES, USERS):
            self.fs.create_dir(f"{self.root}/{sub}", recursive=True)

    # ---- writing ----------------------------------------------------------------------------------------------
    def append_turns(self, turns: list[Turn]) -> int:
        if not turns:
            return 0
        now = time.time()
        rows = [{"turn_id": t.turn_id, "user_id": t.user_id, "adapter_id": t.adapter_id,
                 "context": json.dumps(t.context, ensure_ascii=False), "reply": t.reply, "followup": t.followup,
                 "reply_token_ids": t.reply_token_ids, "reply_logprobs": t.reply_logprobs,
                 "reply_finished": t.reply_finished, "policy_version": t.policy_version, "replied_at": t.replied_at,
                 "followup_at": t.followup_at, "source": t.source, "logged_at": now} for t in turns]
        self._write(TURNS, pa.Table.from_pylist(rows, schema=_TURN_SCHEMA))
        return len(rows)

    def append_outcomes(self, turn_ids: Iterable[str], outcome: str) -> int:
        """Record `outcome` ("trained" or "dropped:<reason>") for each turn id."""
        now = time.time()
        rows = [{"turn_id": tid, "outcome": outcome, "count": 1, "at": now} for tid in turn_ids]
        if rows:
            self._write(OUTCOMES, pa.Table.from_pylist(rows, schema=_OUTCOME_SCHEMA))
        return len(rows)

    def append_rejected(self, n: int) -> None:
        """`n` trained turns went into a version the gate rejected: they count as dropped:rejected from now on."""
        if n > 0:
            self._write(OUTCOMES, pa.Table.from_pylist(
                [{"turn_id": None, "outcome": REJECTED, "count": n, "at": time.time()}], schema=_OUTCOME_SCHEMA))

    # ---- privacy ----------------------------------------------------------------------------------------------
    def forget_user(self, user_id: str) -> int:
        """Delete every logged turn of `user_id` and leave a tombstone (which also opts the user out). Returns how
        many turns were removed. Outcomes keyed by the removed ids are ignored from then on (like pruned turns)."""
        removed = 0
        for info in self._segments(TURNS):
            table = pq.read_table(info.path, filesystem=self.fs, schema=_TURN_SCHEMA)
            theirs = pc.fill_null(pc.equal(table["user_id"], user_id), False)
            n = pc.sum(theirs).as_py() or 0
            if not n:
                continue
            kept = table.filter(pc.invert(theirs))
            if kept.num_rows:  # same time in the name: retention treats the rewritten segment as the old one
                self._write(TURNS, kept, ns=_segment_ns(info.base_name))
            self.fs.delete_file(info.path)
            removed += n
        self._user_event(user_id, DELETED, removed)
        return removed

    def set_opt_out(self, user_id: str, opted_out: bool) -> None:
        self._user_event(user_id, OPT_OUT if opted_out else OPT_IN)

    def opted_out(self) -> set[str]:
        """Hashes (`user_hash`) of the users whose latest event is a deletion or an opt-out."""
        latest: dict[str, str] = {}
        for row in self._read(USERS, _USER_SCHEMA).to_pylist():  # segments in time order
            latest[row["user_hash"]] = row["event"]
        return {h for h, event in latest.items() if event in (DELETED, OPT_OUT)}

    def tombstones(self) -> list[dict]:
        return [r for r in self._read(USERS, _USER_SCHEMA).to_pylist() if r["event"] == DELETED]

    def _user_event(self, user_id: str, event: str, turns_removed: int = 0) -> None:
        row = {"user_hash": user_hash(user_id), "event": event, "turns_removed": turns_removed, "at": time.time()}
        self._write(USERS, pa.Table.from_pylist([row], schema=_USER_SCHEMA))

    def prune(self, now: float | None = None) -> int:
        """Delete segments older than the retention time (by the time in their name). Returns how many."""
        cutoff_ns = int(((now or time.time()) - self.retention_s) * 1e9)
        n = 0
        for sub in (TURNS, OUTCOMES):
            for info in self._segments(sub):
                if _segment_ns(info.base_name) < cutoff_ns:
                    self.fs.delete_file(info.path)
                    n += 1
        return n

    # ---- reading ----------------------------------------------------------------------------------------------
    def turns(self, ids: set[str] | None = None) -> list[Turn]:
        """Logged turns, oldest first (each id once: the first time it was logged); only `ids` when given."""
        table = self._read(TURNS, _TURN_SCHEMA)
        out, seen = [], set()
        for row in table.to_pylist():
            tid = row["turn_id"]
            if tid in seen or (ids is not None and tid not in ids):
                continue
            seen.add(tid)
            out.append(_turn(row))
        return out

    def outcomes(self) -> list[dict]:
        return self._read(OUTCOMES, _OUTCOME_SCHEMA).to_pylist()

    def state(self) -> LogState:
        """The open turns and the exact counts: captured = trained + dropped (by reason) + open."""
        turns = self.turns()
        st = LogState(known={t.turn_id for t in turns}, captured=len(turns))
        finished: set[str] = set()
        for o in self.outcomes():
            if o["outcome"] == REJECTED:
                n = min(o["count"], st.trained)
                st.trained -= n
                st.dropped[REJECTED] += n
                continue
            tid = o["turn_id"]
            if tid not in st.known or tid in finished:  # pruned turn, or a repeated outcome: first one counts
                continue
            finished.add(tid)
            if o["outcome"] == TRAINED:
                st.trained += 1
            else:
                st.dropped[o["outcome"].removeprefix("dropped:")] += 1
        st.open_turns = [t for t in turns if t.turn_id not in finished]
        return st

    # ---- helpers ----------------------------------------------------------------------------------------------
    def _write(self, sub: str, table: pa.Table, ns: int | None = None) -> None:
        name = f"{ns or time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp, final = f"{self.root}/{sub}/.{name}.tmp", f"{self.root}/{sub}/{name}"
        pq.write_table(table, tmp, filesystem=self.fs)
        self.fs.move(tmp, final)

    def _segments(self, sub: str) -> list[pafs.FileInfo]:
        infos = self.fs.get_file_info(pafs.FileSelector(f"{self.root}/{sub}", allow_not_found=True))
        return sorted((i for i in infos if i.base_name.endswith(".parquet") and not i.base_name.startswith(".")),
                      key=lambda i: i.base_name)

    def _read(self, sub: str, schema: pa.Schema) -> pa.Table:
        paths = [i.path for i in self._segments(sub)]
        if not paths:
            return schema.empty_table()
        return pa.concat_tables([pq.read_table(p, filesystem=self.fs, schema=schema) for p in paths])


def _segment_ns(name: str) -> int:
    try:
        return int(name.split("-", 1)[0])
    except ValueError:
        return 0


def _turn(row: dict) -> Turn:
    return Turn(context=json.loads(row["context"]), reply=row["reply"], followup=row["followup"],
                user_id=row["user_id"], adapter_id=row["adapter_id"], reply_token_ids=row["reply_token_ids"],
                reply_logprobs=row["reply_logprobs"], reply_finished=row["reply_finished"],
                policy_version=row["policy_version"], replied_at=row["replied_at"], followup_at=row["followup_at"],
                source=row["source"], turn_id=row["turn_id"])
