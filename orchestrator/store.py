"""The parquet dataset: a folder that holds data files only, so that pandas, pyarrow, DuckDB
(``'dir/**/*.parquet'``, ``read_parquet(dir)``) and polars (``read_parquet(dir)``) read it as is.

* Each finished cell is one part file, written in the metadata folder, fsynced, then renamed
  into the dataset: a killed driver loses nothing that was reported done.
* ``compact`` merges the parts into one file, under a lock (one compaction at a time, on one
  host or several sharing the folder) and a journal (a kill at any instant is finished or
  undone by the next store operation; repeated ``row_id``s are dropped).
* Everything else lives beside the dataset, in ``<path>.meta/``: run configs (``runs/``), claims
  of cells being measured (``claims/``, ``claims.py``: sweeps sharing a store never measure a
  cell twice at once), the compaction lock and journal, temporary files, and files that are not
  readable rows (``unreadable/``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import json
import logging
import os
import signal
import time
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator import rows
from orchestrator.claims import HOST, Claims, alive
from orchestrator.grid import digest
from orchestrator.rows import FAILED, STATUSES

log = logging.getLogger(__name__)
_TYPES = {"string": pa.string(), "int64": pa.int64(), "double": pa.float64(), "bool": pa.bool_(),
          "timestamp": pa.timestamp("us", tz="UTC")}
SCHEMA = pa.schema([(c.name, _TYPES[c.type]) for c in rows.COLUMNS])


class StoreError(OSError):
    """The store cannot be used: the message is one line naming the path."""


def to_table(records: list[dict]) -> pa.Table:
    """Rows (dicts, or records read back from pandas with NaN for nulls) as the dataset's schema.
    A key that is not a column is an error (``rows.UnknownColumn``), never silently dropped."""
    for r in records:
        rows.check(r)
    df = pd.DataFrame(records).reindex(columns=SCHEMA.names)
    arrays = [
        pa.nulls(len(df), f.type) if df[f.name].isna().all() else pa.array(df[f.name], type=f.type, from_pandas=True)
        for f in SCHEMA
    ]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def conform(table: pa.Table) -> pa.Table:
    """A table from any part file in the dataset's schema: missing columns null, others cast
    (raises if a value cannot be cast: such a file is not rows of this dataset)."""
    if "sweep" in table.column_names and "sweep_name" not in table.column_names:  # before the rename
        table = table.rename_columns(["sweep_name" if n == "sweep" else n for n in table.column_names])
    if table.schema.equals(SCHEMA):  # a part this version wrote: as it is (casting 90 columns per part costs)
        return table
    if "cell_id" not in table.column_names or "row_id" not in table.column_names:
        raise ValueError("no cell_id/row_id columns: not rows of this dataset")
    cols = [table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
            for f in SCHEMA]
    return pa.Table.from_arrays(cols, schema=SCHEMA)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _kill_point(step: str) -> None:
    """Tests kill the process at a named step (``ATTN_SWEEP_KILL_AT``) to prove every step safe."""
    if os.environ.get("ATTN_SWEEP_KILL_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


class Store:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.meta = self.path.with_name(self.path.name + ".meta")
        self.claims = Claims(self.meta)

    # ------------------------------------------------------------------ set-up, checks, recovery

    def prepare(self) -> None:
        """Make the store usable for writing, or raise StoreError (one line) before any work:
        folders created, a probe file written and synced in both, a former layout moved, an
        interrupted compaction finished or undone."""
        for d in (self.path, self.meta / "tmp", self.meta / "runs", self.meta / "claims", self.meta / "alive"):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except FileExistsError:
                raise StoreError(f"store.path {d}: exists and is not a folder") from None
            except OSError as exc:
                raise StoreError(f"store.path {self.path}: cannot create {d} ({exc.strerror})") from None
            probe = d / f".probe-{uuid.uuid4().hex}"
            try:
                with open(probe, "wb") as f:
                    f.write(b"x" * 4096)
                    os.fsync(f.fileno())
                probe.unlink()
            except OSError as exc:
                with contextlib.suppress(OSError):
                    probe.unlink()
                raise StoreError(f"store.path {self.path}: {d} is not writable ({exc.strerror})") from None
        self._migrate()
        self.recover()

    def _migrate(self) -> None:
        """Datasets written before the metadata folder kept runs and unreadable files inside."""
        for old, new in (("_runs", "runs"), ("_unreadable", "unreadable")):
            src = self.path / old
            if src.is_dir():
                (self.meta / new).mkdir(parents=True, exist_ok=True)
                for f in src.iterdir():
                    name = f.name + (".unreadable" if new == "unreadable" else "")
                    os.replace(f, self.meta / new / name)
                src.rmdir()
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def recover(self) -> None:
        """Finish (merged file in place) or undo (not yet) a compaction that was cut short, and
        drop temporary files whose writer is gone."""
        journal = self.meta / "compact.journal"
        if journal.exists():
            try:
                j = json.loads(journal.read_text())
            except (OSError, ValueError):
                j = None
            if j and (self.path / j["merged"]).exists():
                for name in j["inputs"]:
                    if name != j["merged"]:
                        (self.path / name).unlink(missing_ok=True)
                _fsync_dir(self.path)
            journal.unlink(missing_ok=True)
        tmp = self.meta / "tmp"
        for f in tmp.glob("*.tmp") if tmp.is_dir() else []:
            host, _, rest = f.name.partition("~")
            pid = rest.split("~", 1)[0]
            dead = host == HOST and pid.isdigit() and not alive(host, int(pid))
            if dead or time.time() - f.stat().st_mtime > 86400:
                f.unlink(missing_ok=True)

    # ------------------------------------------------------------------ writing

    def _tmp(self, name: str) -> Path:
        return self.meta / "tmp" / f"{HOST}~{os.getpid()}~{name}.tmp"

    def _publish(self, table: pa.Table, name: str) -> Path:
        """Write table as data file `name`: beside the dataset, synced, then renamed into it."""
        tmp, final = self._tmp(name), self.path / name
        self.path.mkdir(parents=True, exist_ok=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            pq.write_table(table, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            _kill_point(f"publish:{name.split('-')[0]}")
            try:
                os.replace(tmp, final)
            except OSError as exc:  # the dataset folder is a mount of its own: write in place
                if exc.errno != errno.EXDEV:
                    raise
                hidden = self.path / f".{name}.tmp"
                pq.write_table(table, hidden)
                os.replace(hidden, final)
                tmp.unlink(missing_ok=True)
            _fsync_dir(self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    def append(self, records: list[dict]) -> Path:
        """Write rows as one new part file, durable when this returns (OSError when it cannot be)."""
        return self._publish(to_table(records), f"part-{uuid.uuid4().hex}.parquet")

    # ------------------------------------------------------------------ reading

    def parts(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.glob("*.parquet") if not p.name.startswith(("_", ".")))

    def _set_aside(self, part: Path, why: str, move: bool) -> None:
        if move:
            bad = self.meta / "unreadable"
            try:
                bad.mkdir(parents=True, exist_ok=True)
                os.replace(part, bad / f"{part.name}.unreadable")
                log.warning("store: %s is not rows of this dataset (%s); moved to %s/, other rows kept", part, why, bad)
                return
            except OSError:
                pass
        log.warning("store: %s is not rows of this dataset (%s); skipped", part, why)

    def _read_parts(self, parts: list[Path], set_aside: bool) -> tuple[list[pa.Table], bool]:
        """(tables, whether a part vanished while reading). A file that is not rows of this
        dataset (truncated, not parquet, other columns, values of another type) is moved to
        ``unreadable/`` (or, with set_aside=False, skipped) with a message naming it."""
        def read(part: Path):
            try:
                return conform(pq.read_table(part))
            except Exception as exc:  # noqa: BLE001 - judged below, in order
                return exc

        # a sweep's end reads a part per cell: the reads (file opens, decoding) overlap in threads
        with concurrent.futures.ThreadPoolExecutor(min(8, max(1, len(parts)))) as pool:
            got = list(pool.map(read, parts))
        tables = []
        for part, table in zip(parts, got, strict=True):
            if isinstance(table, FileNotFoundError):
                return tables, True
            if isinstance(table, Exception):  # truncated, not parquet, foreign columns or types
                self._set_aside(part, f"{type(table).__name__}: {str(table).splitlines()[0][:200]}", set_aside)
            else:
                tables.append(table)
        return tables, False

    def read_table(self, columns: list[str] | None = None, set_aside: bool = True) -> pa.Table:
        """Every part's rows in the dataset's schema. A part removed while reading (another
        process compacting) means the listing is read again."""
        for _ in range(20):
            tables, vanished = self._read_parts(self.parts(), set_aside)
            if not vanished:
                break
        schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
        if not tables:
            return schema.empty_table()
        table = pa.concat_tables(tables)
        return table if columns is None else table.select(columns)

    def read(self, columns: list[str] | None = None, set_aside: bool = True) -> pd.DataFrame:
        """Every row (repeats of a row_id dropped), oldest first."""
        cols = None if columns is None else sorted(set(columns) | {"row_id", "ended_at"})
        df = self.read_table(cols, set_aside).to_pandas()
        df = df.drop_duplicates("row_id").sort_values("ended_at", kind="stable", ignore_index=True)
        return df if columns is None else df[list(columns)]

    def latest(self, columns: list[str] | None = None, set_aside: bool = True) -> pd.DataFrame:
        """The newest row of each cell."""
        cols = None if columns is None else sorted(set(columns) | {"cell_id"})
        df = self.read(cols, set_aside)
        return df.drop_duplicates("cell_id", keep="last").reset_index(drop=True)

    def done(self, rerun: str = "none", measure_key: str | None = None) -> set[str]:
        """Cell ids that need no new measurement. rerun: none (resume), failed (also redo
        error/crashed/timeout), changed (also redo cells measured with other settings than
        measure_key), all (redo everything)."""
        return set() if rerun == "all" else self.look(rerun, measure_key)[0]

    def look(self, rerun: str = "none", measure_key: str | None = None) -> tuple[set[str], set[str]]:
        """(``done``'s cell ids, every row's id) from one read of the dataset: a sweep's look before
        it claims cells (``written_since`` then tells which rows came after)."""
        df = self.read(["cell_id", "status", "measure_key", "row_id"])
        ids = set(df["row_id"])
        if rerun == "all":
            return set(), ids
        df = df.drop_duplicates("cell_id", keep="last")
        skip = set(STATUSES) - (FAILED if rerun == "failed" else set())
        df = df[df["status"].isin(skip)]
        if rerun == "changed" and measure_key:
            df = df[df["measure_key"].eq(measure_key)]
        return set(df["cell_id"]), ids

    def written_since(self, known: set[str], run_id: str) -> set[str]:
        """Cell ids another run wrote a row for that is not among ``known`` row ids. By the rows
        themselves, not their times: a row lands after its cell's ``ended_at``, so a cell another
        sweep finished just before we looked, and wrote just after, is still found."""
        df = self.read(["cell_id", "run_id", "row_id"])
        return set(df.loc[~df["row_id"].isin(known) & df["run_id"].ne(run_id), "cell_id"])

    def measured_otherwise(self, cell_ids: set[str], measure_key: str) -> set[str]:
        """Those of cell_ids whose newest row was measured with other settings (or before
        settings were recorded)."""
        df = self.latest(["cell_id", "measure_key"])
        df = df[df["cell_id"].isin(cell_ids)]
        return set(df.loc[df["measure_key"].ne(measure_key) | df["measure_key"].isna(), "cell_id"])

    # ------------------------------------------------------------------ compaction

    def compact(self) -> Path | None:
        """Merge all data files into one, each row_id once. One compaction at a time (a second
        returns None at once); crash-safe at every step (see ``recover``)."""
        with self._lock("compact") as held:
            if not held:
                return None
            self.recover()
            parts = self.parts()  # parts appended from now on stay as they are
            tables, _ = self._read_parts(parts, set_aside=True)
            parts = [p for p in parts if p.exists()]
            table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
            repeated = pd.Index(table["row_id"].to_pylist()).duplicated()
            if len(parts) < 2 and not repeated.any():
                return None
            if repeated.any():  # a kill in an earlier compaction, or a reader's copy: once each
                table = table.filter(pa.array(~repeated))
            name = f"data-{uuid.uuid4().hex}.parquet"
            journal = self.meta / "compact.journal"
            self._write_json(journal, {"merged": name, "inputs": [p.name for p in parts]})
            _kill_point("compact:journal")
            out = self._publish(table, name)
            _kill_point("compact:published")
            for i, p in enumerate(parts):
                p.unlink(missing_ok=True)
                if i == 0:
                    _kill_point("compact:unlinking")
            _fsync_dir(self.path)
            journal.unlink(missing_ok=True)
            return out

    @contextlib.contextmanager
    def _lock(self, name: str):
        """An exclusive lock file (O_EXCL: atomic on local and network file systems); one left by a
        dead process, or older than an hour, is taken over."""
        path = self.meta / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        held = False
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if not self._stale_lock(path):
                    break
                path.unlink(missing_ok=True)
                continue
            os.write(fd, json.dumps({"host": HOST, "pid": os.getpid(), "since": time.time()}).encode())
            os.close(fd)
            held = True
            break
        try:
            yield held
        finally:
            if held:
                path.unlink(missing_ok=True)

    @staticmethod
    def _stale_lock(path: Path) -> bool:
        try:
            owner = json.loads(path.read_text())
            return not alive(owner["host"], owner["pid"]) or time.time() - owner["since"] > 3600
        except (OSError, ValueError, KeyError):
            return time.time() - path.stat().st_mtime > 60 if path.exists() else True

    # ------------------------------------------------------------------ run records

    def known_target(self, conditions: dict) -> str | None:
        """The target a private cluster gave this machine's cells the last time under these
        conditions (``driver.target_conditions``), or None."""
        try:
            return json.loads((self.meta / "targets.json").read_text()).get(digest(conditions))
        except (OSError, ValueError, AttributeError):
            return None

    def remember_target(self, conditions: dict, target: str) -> None:
        """Best effort: a later sweep under the same conditions can then check its cells against
        the dataset before it starts a cluster. Two sweeps writing at once may drop an entry
        (that sweep's next run starts its cluster first, as before)."""
        path = self.meta / "targets.json"
        try:
            known = json.loads(path.read_text()) if path.exists() else {}
            if known.get(digest(conditions)) != target:
                self._write_json(path, {**known, digest(conditions): target})
        except (OSError, ValueError, AttributeError):
            pass

    def _write_json(self, path: Path, info: dict) -> None:
        tmp = self._tmp(path.name)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            f.write(json.dumps(info, indent=2, default=str))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def save_run(self, run_id: str, info: dict) -> None:
        runs = self.meta / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        self._write_json(runs / f"{run_id}.json", info)

    def runs(self) -> dict[str, dict]:
        out = {}
        for d in (self.meta / "runs", self.path / "_runs"):  # the former place too
            for p in sorted(d.glob("*.json")) if d.is_dir() else []:
                with contextlib.suppress(OSError, ValueError):
                    out[p.stem] = json.loads(p.read_text())
        return out
