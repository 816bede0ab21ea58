"""The parquet dataset: durable appends, resume sets, compaction, unreadable files."""

import uuid
from datetime import datetime, timedelta, timezone

import pandas as pd
import pyarrow.dataset as ds
from conftest import each_row_once

from orchestrator.store import SCHEMA, Store

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def row(cell, status, minute=0, **kw):
    return {"cell_id": cell, "row_id": uuid.uuid4().hex, "status": status,
            "ended_at": T0 + timedelta(minutes=minute), "median_ms": 1.0, **kw}


def test_rows_are_readable_without_project_code(tmp_path):
    s = Store(tmp_path)
    s.append([row("a", "ok", 0, backend="flash", seq_len=128)])
    s.append([row("b", "oom", 1, backend="math", seq_len=16384)])
    df = pd.read_parquet(tmp_path)
    assert sorted(df.cell_id) == ["a", "b"]
    table = ds.dataset(tmp_path, format="parquet").to_table()
    assert table.schema.equals(SCHEMA) and table.num_rows == 2


def test_resume_sets_follow_the_latest_row_of_each_cell(tmp_path):
    s = Store(tmp_path)
    s.append([row("ok1", "ok", 0), row("crash", "crashed", 0), row("unsup", "unsupported", 0)])
    s.append([row("flaky", "timeout", 0)])
    s.append([row("flaky", "ok", 5)])  # a later run finished it
    assert s.done("none") == {"ok1", "crash", "unsup", "flaky"}
    assert s.done("failed") == {"ok1", "unsup", "flaky"}
    assert s.done("all") == set()
    assert s.latest().set_index("cell_id").loc["flaky", "status"] == "ok"


def test_compaction_keeps_every_row_once(tmp_path):
    s = Store(tmp_path)
    rows = [row(f"c{i}", "ok", i) for i in range(20)]
    for r in rows:
        s.append([r])
    assert len(s.parts()) == 20
    s.compact()
    assert len(s.parts()) == 1
    assert sorted(s.read().row_id) == sorted(r["row_id"] for r in rows)


def test_a_repeated_row_id_is_read_once(tmp_path):
    """A compaction cut short leaves a row in two files: readers see it once."""
    s = Store(tmp_path)
    r = row("a", "ok")
    s.append([r])
    s.append([r])
    assert len(s.read()) == 1


def test_unreadable_files_are_named_set_aside_and_valid_rows_kept(tmp_path, caplog):
    s = Store(tmp_path / "results")
    good = s.append([row("a", "ok")])
    truncated = s.path / "part-truncated.parquet"
    truncated.write_bytes(good.read_bytes()[:100])
    (s.path / "part-text.parquet").write_text("not parquet at all")
    df = s.read()
    out = caplog.text
    assert "part-truncated.parquet" in out and "part-text.parquet" in out
    assert list(df.cell_id) == ["a"]
    assert not truncated.exists() and (s.meta / "unreadable" / "part-truncated.parquet.unreadable").exists()
    assert list(pd.read_parquet(s.path).cell_id) == ["a"]  # plain readers work again


def test_empty_or_missing_store(tmp_path):
    s = Store(tmp_path / "nothing")
    assert s.done() == set() and s.read().empty and s.compact() is None


def test_a_key_that_is_not_a_column_is_an_error_not_dropped(tmp_path):
    import pytest

    from orchestrator.rows import UnknownColumn

    with pytest.raises(UnknownColumn, match="est_call_s"):
        Store(tmp_path).append([row("a", "ok", est_call_s=0.1)])
    assert not list(tmp_path.glob("*.parquet"))


def test_every_reader_reads_the_folder_after_a_quarantine_and_a_rerun(tmp_path):
    """pandas, pyarrow, DuckDB and polars read the dataset folder as is: data files only,
    whatever the store set aside or keeps beside it."""
    s = Store(tmp_path / "results")
    s.prepare()
    first = row("a", "ok", 0)
    s.append([first])
    again = row("a", "ok", 1)
    s.append([again])  # the same cell measured again (run.rerun)
    (s.path / "part-broken.parquet").write_bytes(b"PAR1 truncated")
    s.save_run("r1", {"config": {}})
    assert len(s.read()) == 2  # the broken part set aside, named
    each_row_once(s.path, {first["row_id"], again["row_id"]})  # every reader, each row once
    assert sorted(f.name for f in s.path.iterdir()) == sorted(f.name for f in s.parts())  # data files only


def test_a_row_written_after_we_looked_counts_even_if_its_cell_ended_before(tmp_path):
    """Two sweeps on one store: sweep B looks at the dataset, then A's row for a cell lands, a
    row whose cell ended before B looked (a row is written after its cell ends). B must see it
    as measured meanwhile, or it measures the cell again (seen: 22 rows for 20 cells with three
    sweeps at once, when this went by the rows' end times)."""
    s = Store(tmp_path)
    s.append([row("old", "ok", 0, run_id="run-a")])
    known = s.look()[1]  # B looks: the cells it will claim or wait for
    s.append([row("x", "ok", -60, run_id="run-a")])  # ended an hour before, written now
    s.append([row("mine", "ok", 5, run_id="run-b")])
    assert s.written_since(known, "run-b") == {"x"}
    s.compact()  # rewritten into one file: the same rows, still told apart by their ids
    assert s.written_since(known, "run-b") == {"x"}
