"""Grid expansion: a pure function from the config to the list of cells. No Ray, no torch."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from dataclasses import asdict, dataclass


def digest(value, n: int = 16) -> str:
    """A stable hash of a JSON-able value (sorted keys): a cell's id, the measure key, the
    target conditions."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:n]


SHAPE = ["workload", "mode", "dtype", "causal", "head_dim", "num_heads", "batch_size", "seq_len"]  # a cell's shape


@dataclass(frozen=True)
class Cell:
    """One measurement: everything that decides what is measured, and nothing else."""

    workload: str
    backend: str
    mode: str
    dtype: str
    causal: bool
    head_dim: int
    num_heads: int
    batch_size: int
    seq_len: int
    target: str = "any"  # the accelerator type the cell must run on ("any": whichever is free)

    @functools.cached_property  # hashed once per cell: the driver asks for it many times
    def cell_id(self) -> str:
        """Stable across runs, machines and Python versions: a hash of the parameters."""
        return digest(asdict(self))

    def params(self) -> dict:
        return asdict(self)


def heads_for(grid, head_dim: int) -> list[int]:
    if grid.model_dim is not None:
        return [grid.model_dim // head_dim]
    return list(grid.num_heads)


def count(cfg) -> int:
    """How many cells expand(cfg) gives, from the axes alone (a huge grid is refused in no time)."""
    g = cfg.grid
    n = len(set(g.accelerators)) if g.accelerators else 1
    for axis in (g.dtypes, [bool(c) for c in g.causal], g.modes, g.batch_sizes, g.seq_lens, g.backends):
        n *= len(set(axis))
    return n * sum(len(set(heads_for(g, d))) for d in set(g.head_dims))


def expand(cfg, default_target: str = "any") -> list[Cell]:
    """Every combination of the grid's axes, in a stable order, duplicates removed.

    The order puts the cheapest cells of each group first, so a sweep reports early.
    """
    g = cfg.grid
    targets = list(g.accelerators) if g.accelerators else [default_target]
    cells = {}
    for target, dtype, causal, mode, head_dim, batch, seq, backend in itertools.product(
        targets, g.dtypes, g.causal, g.modes, g.head_dims, g.batch_sizes, sorted(g.seq_lens), g.backends
    ):
        for heads in heads_for(g, head_dim):
            cell = Cell(cfg.workload, backend, mode, dtype, bool(causal), head_dim, heads, batch, seq, target)
            cells.setdefault(cell.cell_id, cell)
    return list(cells.values())
