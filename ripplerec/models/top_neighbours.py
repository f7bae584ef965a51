"""Item x item counts kept two ways: the whole matrix, or each item's strongest neighbours only.

:class:`DenseCounts` holds the whole matrix (4 bytes per pair of items: fine for a few thousand
items, 40 GB at 100,000). :class:`TopNeighbours` keeps at most ``limit`` columns a row, cut back to the
``keep`` largest counts when a row would hold more; beyond a couple of thousand items each row is a small
open-addressing hash table of ``width`` slots (8 bytes a slot), so memory is ``8 * width`` bytes per item
whatever the catalog size. Until a row is cut, its counts are exactly the dense matrix's (the same
additions in the same order).

Both answer the same calls: ``grow``, ``add`` (increments in order), ``row_sums`` (weighted sums of
rows for a batch of histories, vectorised), ``dense``, ``state`` and ``restore``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from ripplerec.models.base import ModelLoadError
from ripplerec.models.catalog import grown

__all__ = ["DenseCounts", "TopNeighbours", "PairCounts", "remapped_state", "weighted_row_sums", "DENSE_ITEMS"]

# up to this many items TopNeighbours keeps its counts in one dense matrix (16 MB): a catalog's count
# updates and feature sums then cost what the dense matrix's do; beyond, hashed rows (8 bytes a slot)
DENSE_ITEMS = 2048
_FIBONACCI = np.uint32(2654435769)  # 2**32 / golden ratio: spreads consecutive columns over a row's slots
_KEY_SHIFT = 32  # (row << 32) | column: one sortable key per cell
_COLUMN_MASK = (1 << _KEY_SHIFT) - 1


def weighted_row_sums(
    matrix: NDArray[np.float32], rows: NDArray[np.int64], weights: NDArray[np.float32], n: int
) -> NDArray[np.float32]:
    """``sum_h weights[b, h] * matrix[rows[b, h], :n]`` for every ``b``, ``(B, n)``.

    An ``embedding_bag``: the ``(B, H, n)`` gather is never materialised, and torch keeps to its thread
    setting where numpy's BLAS would start threads of its own. The bag reads whole rows of ``matrix``
    (a matrix grown beyond ``n`` columns would otherwise be copied into a contiguous ``(rows, n)`` table on
    every call) and keeps the first ``n`` columns of the sums.
    """
    table = torch.from_numpy(np.ascontiguousarray(matrix))
    sums = nn.functional.embedding_bag(
        torch.from_numpy(rows), table, per_sample_weights=torch.from_numpy(weights), mode="sum"
    )
    return sums.numpy()[:, :n]


class DenseCounts:
    """The whole item x item matrix, float32, grown with the catalog (the count baselines keep this)."""

    def __init__(self) -> None:
        self.matrix = np.zeros((0, 0), dtype=np.float32)

    def grow(self, n: int) -> None:
        self.matrix = grown(self.matrix, n, axes=(0, 1))

    def add(self, rows: NDArray[np.int64], columns: NDArray[np.int64], values: NDArray[np.float32]) -> None:
        """Add ``values[k]`` to cell ``(rows[k], columns[k])``, in order (flat indices: ``np.add.at`` is five times
        faster with them than with a pair of index arrays)."""
        np.add.at(self.matrix.reshape(-1, copy=False), rows * self.matrix.shape[1] + columns, values)

    def row_sums(self, rows: NDArray[np.int64], weights: NDArray[np.float32], n: int) -> NDArray[np.float32]:
        return weighted_row_sums(self.matrix, rows, weights, n)

    def dense(self, n: int) -> NDArray[np.float32]:
        return self.matrix[:n, :n]

    def state(self, name: str, n: int) -> dict[str, NDArray[Any]]:
        return {name: self.matrix[:n, :n]}

    def restore(self, arrays: Mapping[str, NDArray[Any]], name: str, n: int) -> None:
        saved = arrays[name]
        if saved.shape != (n, n):
            raise ModelLoadError(f"saved {name} holds {saved.shape}, expected {(n, n)}")
        self.matrix = np.zeros((0, 0), dtype=np.float32)
        self.grow(n)
        self.matrix[:n, :n] = saved


class _Tables:
    """Open-addressing hash tables of one ``width`` (a power of two), one per row that holds one; handed out
    and taken back (a free list). ``slots`` holds column + 1 (0: empty), ``values`` the counts."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.slots = np.zeros((0, width), dtype=np.int32)
        self.values = np.zeros((0, width), dtype=np.float32)
        self.free = np.zeros(0, dtype=np.int64)  # tables taken back, handed out again first
        self.used = 0  # tables handed out from the end so far
        self._shift = np.uint32(32 - (width.bit_length() - 1))

    @property
    def nbytes(self) -> int:
        return int(self.slots.nbytes + self.values.nbytes + self.free.nbytes)

    def take(self, count: int) -> NDArray[np.int64]:
        reused = min(count, self.free.size)
        fresh = np.arange(self.used, self.used + count - reused)
        tables = np.concatenate([self.free[self.free.size - reused :], fresh])
        self.free = self.free[: self.free.size - reused]
        self.used += count - reused
        # zero-padded (calloc'd): the pages of tables never handed out are never touched
        self.slots = grown(self.slots, self.used)
        self.values = grown(self.values, self.used)
        return tables

    def give_back(self, tables: NDArray[np.int64]) -> None:
        self.slots[tables] = 0
        self.values[tables] = 0.0
        self.free = np.concatenate([self.free, tables])

    def _probes(
        self, tables: NDArray[np.int64], columns: NDArray[np.int64]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        """Where each ``(table, column)``'s probing starts (flat slot index), its table's first slot, and its step:
        double hashing, an odd step (so a probe visits every slot of a power-of-two table) from the column."""
        hashed = columns.astype(np.uint32) * _FIBONACCI
        start = (hashed >> self._shift).astype(np.int64)
        step = ((hashed >> np.uint32(8)) & np.uint32(self.width - 1)).astype(np.int64) | 1
        base = tables * self.width
        return base + start, base, step

    def find(self, tables: NDArray[np.int64], columns: NDArray[np.int64]) -> NDArray[np.int64]:
        """Flat slot index (``table * width + slot``) of each ``(table, column)``; -1 where the table lacks it."""
        flat = self.slots.reshape(-1)
        found = np.full(tables.size, -1, dtype=np.int64)
        at, base, step = self._probes(tables, columns)
        wanted = (columns + 1).astype(np.int32)
        pending = np.arange(tables.size)
        mask = self.width - 1
        while pending.size:  # stop at the column or at an empty slot (a table is never full)
            held = flat[at]
            hit = held == wanted
            found[pending[hit]] = at[hit]
            go_on = ~hit & (held != 0)
            pending, at, base, step, wanted = pending[go_on], at[go_on], base[go_on], step[go_on], wanted[go_on]
            at = base + ((at - base + step) & mask)
        return found

    def insert(self, tables: NDArray[np.int64], columns: NDArray[np.int64]) -> NDArray[np.int64]:
        """Claim a slot for each ``(table, column)`` (distinct pairs the tables lack, with room for them): flat
        indices. Pairs probing the same free slot at once all write their column there; the one that stays has
        it (which one does not matter: slot order changes no count or score), the others probe on."""
        flat = self.slots.reshape(-1)
        taken = np.empty(tables.size, dtype=np.int64)
        at, base, step = self._probes(tables, columns)
        wanted = (columns + 1).astype(np.int32)
        pending = np.arange(tables.size)
        mask = self.width - 1
        while pending.size:
            free = flat[at] == 0
            flat[at[free]] = wanted[free]
            won = np.zeros(pending.size, dtype=bool)
            won[free] = flat[at[free]] == wanted[free]
            taken[pending[won]] = at[won]
            on = ~won
            pending, at, base, step, wanted = pending[on], at[on], base[on], step[on], wanted[on]
            at = base + ((at - base + step) & mask)
        return taken


class TopNeighbours:
    """Each row's strongest columns: at most ``limit`` of them, cut back to the ``keep`` largest counts when a
    row would hold more (ties: the later column, the newer item, stays). ``cut`` counts the rows cut back
    so far (0: every count is exactly the dense matrix's).

    Two layouts, the same counts bit for bit: up to ``dense_items`` items (default ``DENSE_ITEMS``), one
    dense float32 ``matrix`` (16 MB at 2,048 items; the dense matrix's speed); beyond, each row that holds
    columns has an open-addressing hash table (8 bytes a slot) of the smallest size class that keeps it at
    most 3/4 full: 8, 32, 128 ... slots, up to ``width`` (the smallest power of two >= ``2 * keep``; ``limit``
    is halfway between ``keep`` and ``width``). Memory follows the columns held, ``8 * width`` bytes an item
    at most, whatever the catalog size.
    """

    def __init__(self, keep: int = 256, dense_items: int | None = None) -> None:
        self.dense_items = DENSE_ITEMS if dense_items is None else dense_items
        if keep < 1 or self.dense_items < 0:
            raise ValueError("keep must be >= 1 and dense_items >= 0")
        self.keep = keep
        self.width = 1 << (2 * keep - 1).bit_length()
        self.limit = (keep + self.width) // 2
        widths = [self.width]
        while widths[0] // 4 >= 8:
            widths.insert(0, widths[0] // 4)
        self._widths = widths
        # the most columns a row may hold in each size class (index: class + 1; 0: a row without a table)
        self._limits = np.array([0] + [3 * w // 4 for w in widths[:-1]] + [self.limit], dtype=np.int64)
        self._clear()

    def _clear(self) -> None:
        self.matrix: NDArray[np.float32] | None = np.zeros((0, 0), dtype=np.float32)  # None: hashed rows
        self.sizes = np.zeros(0, dtype=np.int32)  # columns held per row
        self.tier = np.zeros(0, dtype=np.int8)  # hashed rows: size class + 1 of the row's table, 0 for none
        self.table = np.zeros(0, dtype=np.int64)  # and which table of that class
        self.tables = [_Tables(width) for width in self._widths]
        self.cut = 0

    @property
    def nbytes(self) -> int:
        if self.matrix is not None:
            held = self.matrix.nbytes
        else:
            held = sum(tables.nbytes for tables in self.tables) + self.tier.nbytes + self.table.nbytes
        return int(held + self.sizes.nbytes)

    def grow(self, n: int) -> None:
        self.sizes = grown(self.sizes, n)
        self.tier = grown(self.tier, n)
        self.table = grown(self.table, n)
        if self.matrix is None or n <= self.dense_items:
            if self.matrix is not None and self.matrix.shape[0] < n:
                size = min(max(n, 2 * self.matrix.shape[0], 64), self.dense_items)
                matrix = np.zeros((size, size), dtype=np.float32)
                matrix[: self.matrix.shape[0], : self.matrix.shape[1]] = self.matrix
                self.matrix = matrix
            return
        # past dense_items: the rows move into hash tables (each fits: it holds at most limit columns)
        rows, columns = np.nonzero(self.matrix)
        values = self.matrix[rows, columns]
        self.matrix = None
        held, sizes = np.unique(rows, return_counts=True)
        self.sizes[:] = 0
        self._assign(held, self._tier_for(sizes))
        self._set(self._insert(rows.astype(np.int64), columns.astype(np.int64)), values)

    def add(self, rows: NDArray[np.int64], columns: NDArray[np.int64], values: NDArray[np.float32]) -> None:
        """Add ``values[k]`` (> 0) to cell ``(rows[k], columns[k])``, in order: each cell's sum is the dense
        matrix's, bit for bit. A row that then holds more than ``limit`` columns keeps its ``keep`` largest sums."""
        if rows.size == 0:
            return
        if self.matrix is not None:
            self._add_dense(self.matrix, rows, columns, values)
        else:
            self._add_hashed(rows, columns, values)

    # -- the dense layout -------------------------------------------------------------------------------
    def _add_dense(
        self,
        matrix: NDArray[np.float32],
        rows: NDArray[np.int64],
        columns: NDArray[np.int64],
        values: NDArray[np.float32],
    ) -> None:
        size = matrix.shape[1]
        flat = matrix.reshape(-1)
        cells = rows * size + columns
        fresh = cells[flat[cells] == 0]  # counts are positive: 0 is an empty cell
        if fresh.size:  # each fresh cell once: of the increments writing their index there, one stays
            marks = np.arange(1, fresh.size + 1, dtype=np.float32)  # exact in float32 up to 2**24 increments
            flat[fresh] = marks
            fresh = fresh[flat[fresh] == marks]
            flat[fresh] = 0.0
        np.add.at(flat, cells, values)
        if fresh.size:
            counts = np.bincount(fresh // size, minlength=matrix.shape[0])
            fresh_rows = np.flatnonzero(counts)
            self.sizes[fresh_rows] += counts[fresh_rows].astype(np.int32)
            over = fresh_rows[self.sizes[fresh_rows] > self.limit]
            if over.size:
                self._cut_dense(matrix, over)

    def _cut_dense(self, matrix: NDArray[np.float32], rows: NDArray[np.int64]) -> None:
        """Keep each of ``rows``' ``keep`` largest counts; among equal counts at the cut, the later columns."""
        block = matrix[rows]
        size = block.shape[1]
        kth = np.partition(block, size - self.keep, axis=1)[:, size - self.keep, None]  # the keep-th largest
        above, tied = block > kth, block == kth
        room = self.keep - above.sum(axis=1, keepdims=True)  # tied counts that stay: the last ones
        from_right = np.cumsum(tied[:, ::-1], axis=1)[:, ::-1]
        block[~(above | (tied & (from_right <= room)))] = 0.0
        matrix[rows] = block
        self.sizes[rows] = self.keep
        self.cut += int(rows.size)

    # -- the hashed layout: cells are located as (flat slot index << 3) | size class ---------------------
    def _tier_for(self, sizes: NDArray[Any]) -> NDArray[np.int64]:
        """The smallest size class (+ 1) whose tables hold ``sizes`` columns (at most ``limit``)."""
        return np.searchsorted(self._limits[1:], sizes, side="left") + 1

    def _by_tier(self, rows: NDArray[np.int64]) -> list[tuple[_Tables, int, NDArray[np.intp]]]:
        """The size classes of ``rows``' tables: (tables, class + 1, which of ``rows`` have one of them)."""
        tiers = self.tier[rows]
        return [
            (tables, tier, np.flatnonzero(tiers == tier))
            for tier, tables in enumerate(self.tables, start=1)
            if (tiers == tier).any()
        ]

    def _find(self, rows: NDArray[np.int64], columns: NDArray[np.int64]) -> NDArray[np.int64]:
        """Where each ``(row, column)`` is held; -1 where the row lacks it."""
        found = np.full(rows.size, -1, dtype=np.int64)
        for tables, tier, which in self._by_tier(rows):
            at = tables.find(self.table[rows[which]], columns[which])
            found[which] = np.where(at >= 0, (at << 3) | (tier - 1), -1)
        return found

    def _insert(self, rows: NDArray[np.int64], columns: NDArray[np.int64]) -> NDArray[np.int64]:
        """Claim a cell for each ``(row, column)`` (distinct pairs the rows lack; their tables have room)."""
        located = np.empty(rows.size, dtype=np.int64)
        for tables, tier, which in self._by_tier(rows):
            located[which] = (tables.insert(self.table[rows[which]], columns[which]) << 3) | (tier - 1)
        np.add.at(self.sizes, rows, np.int32(1))
        return located

    def _add_at(self, located: NDArray[np.int64], values: NDArray[np.float32]) -> None:
        """Add ``values`` to the cells ``located``, in order (a cell's increments all go to one table)."""
        tiers = located & 7
        for tier, tables in enumerate(self.tables):
            which = tiers == tier
            if which.any():
                np.add.at(tables.values.reshape(-1), located[which] >> 3, values[which])

    def _set(self, located: NDArray[np.int64], values: NDArray[np.float32]) -> None:
        tiers = located & 7
        for tier, tables in enumerate(self.tables):
            which = tiers == tier
            tables.values.reshape(-1)[located[which] >> 3] = values[which]

    def _assign(self, rows: NDArray[np.int64], tiers: NDArray[np.int64]) -> None:
        """Give ``rows`` (distinct, without a table) an empty table of size class ``tiers - 1``."""
        for tier, tables in enumerate(self.tables, start=1):
            which = rows[tiers == tier]
            if which.size:
                self.table[which] = tables.take(which.size)
                self.tier[which] = tier

    def _release(self, rows: NDArray[np.int64]) -> None:
        """Take ``rows``' tables back (the rows then hold nothing)."""
        for tables, _, which in self._by_tier(rows):
            tables.give_back(self.table[rows[which]])
        self.tier[rows] = 0
        self.sizes[rows] = 0

    def _entries(
        self, rows: NDArray[np.int64]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]:
        """The cells held by ``rows`` (distinct): their rows, columns and counts."""
        if self.matrix is not None:
            which, columns = np.nonzero(self.matrix[rows])
            return rows[which], columns.astype(np.int64), self.matrix[rows[which], columns]
        parts = [(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))]
        for tables, _, which in self._by_tier(rows):
            held_rows, places = rows[which], self.table[rows[which]]
            held = tables.slots[places]
            row, slot = np.nonzero(held)
            parts.append((held_rows[row], held[row, slot].astype(np.int64) - 1, tables.values[places[row], slot]))
        return (
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]),
        )

    def _move(self, rows: NDArray[np.int64], tiers: NDArray[np.int64]) -> None:
        """Move ``rows`` (distinct) and their cells into tables of size classes ``tiers - 1``."""
        held_rows, held_columns, held_values = self._entries(rows)
        self._release(rows)
        self._assign(rows, tiers)
        self._set(self._insert(held_rows, held_columns), held_values)

    def _add_hashed(self, rows: NDArray[np.int64], columns: NDArray[np.int64], values: NDArray[np.float32]) -> None:
        keys = (rows << _KEY_SHIFT) | columns
        cells, inverse = np.unique(keys, return_inverse=True)
        cell_rows, cell_columns = cells >> _KEY_SHIFT, cells & _COLUMN_MASK
        located = self._find(cell_rows, cell_columns)
        absent = located < 0
        fresh_rows, fresh_counts = np.unique(cell_rows[absent], return_counts=True)
        sizes = self.sizes[fresh_rows] + fresh_counts
        over = sizes > self.limit
        bigger = ~over & (sizes > self._limits[self.tier[fresh_rows]])
        if bigger.any():  # rows outgrowing their tables (or without one) move into larger ones
            moving = fresh_rows[bigger]
            self._move(moving, self._tier_for(sizes[bigger]))
            moved = ~absent & np.isin(cell_rows, moving)
            located[moved] = self._find(cell_rows[moved], cell_columns[moved])
        if not over.any():
            located[absent] = self._insert(cell_rows[absent], cell_columns[absent])
            self._add_at(located[inverse], values)
            return
        cutting = np.isin(cell_rows, fresh_rows[over])
        fits = absent & ~cutting
        located[fits] = self._insert(cell_rows[fits], cell_columns[fits])
        stays = ~cutting[inverse]
        self._add_at(located[inverse[stays]], values[stays])
        self._cut_hashed(fresh_rows[over], keys[~stays], values[~stays])

    def _cut_hashed(self, rows: NDArray[np.int64], keys: NDArray[np.int64], values: NDArray[np.float32]) -> None:
        """Add the increments ``keys``/``values`` (in order) to ``rows`` (sorted, distinct), then keep each row's
        ``keep`` largest sums (ties: the later column), as :meth:`_add_dense` does."""
        held_rows, held_columns, held_values = self._entries(rows)
        held_keys = (held_rows << _KEY_SHIFT) | held_columns
        cells, inverse = np.unique(np.concatenate([held_keys, keys]), return_inverse=True)
        sums = np.zeros(cells.size, dtype=np.float32)
        sums[inverse[: held_keys.size]] = held_values  # each held cell once: its count, then the new increments
        np.add.at(sums, inverse[held_keys.size :], values)
        cell_rows, cell_columns = cells >> _KEY_SHIFT, cells & _COLUMN_MASK
        order = np.lexsort((-cell_columns, -sums, cell_rows))  # by row; largest sum, then later column, first
        ranked_rows = cell_rows[order]
        starts = np.searchsorted(ranked_rows, ranked_rows, side="left")
        kept = order[np.arange(order.size) - starts < self.keep]
        self._release(rows)
        self._assign(rows, np.full(rows.size, len(self.tables), dtype=np.int64))
        self._set(self._insert(cell_rows[kept], cell_columns[kept]), sums[kept])
        self.cut += int(rows.size)

    # -- reading ------------------------------------------------------------------------------------
    def row_sums(self, rows: NDArray[np.int64], weights: NDArray[np.float32], n: int) -> NDArray[np.float32]:
        """``sum_h weights[b, h] * row(rows[b, h])[:n]`` for every ``b``, ``(B, n)``.

        The dense layout: :func:`weighted_row_sums` of the matrix. Hashed rows: the cells of the rows read are
        scattered into the sums in history order, work in proportion to the cells, not to the catalog (each
        product is rounded before it is added, where the ``embedding_bag`` fuses the two: the last bit may
        differ from the dense layout's).
        """
        if self.matrix is not None:
            return weighted_row_sums(self.matrix, rows, weights, n)
        batch, length = rows.shape
        read, local = np.unique(rows, return_inverse=True)
        held_rows, held_columns, held_values = self._entries(read)
        held_local = np.searchsorted(read, held_rows)
        by_row = np.argsort(held_local, kind="stable")  # each read row's cells together
        held_columns, held_values = held_columns[by_row], held_values[by_row]
        sizes = np.bincount(held_local, minlength=read.size)
        starts = np.cumsum(sizes) - sizes
        flat_local, flat_weights = local.reshape(-1), weights.reshape(-1)
        taken = np.where(flat_weights != 0, sizes[flat_local], 0)  # padding slots (weight 0) add nothing
        # every (user, history slot)'s cells, in history order: an index into the read rows' cells
        first = np.cumsum(taken) - taken
        cells = np.arange(int(taken.sum())) - np.repeat(first - starts[flat_local], taken)
        columns = held_columns[cells]
        inside = columns < n
        users = np.repeat(np.arange(batch * length) // length, taken)
        targets = (users * n + columns)[inside]
        products = (held_values[cells] * np.repeat(flat_weights, taken))[inside]
        out = np.zeros(batch * n, dtype=np.float32)
        np.add.at(out, targets, products)  # in order: each (user, column)'s products in history order
        return out.reshape(batch, n)

    def dense(self, n: int) -> NDArray[np.float32]:
        """The first ``n`` rows and columns as a dense matrix (tests and small catalogs)."""
        out = np.zeros((n, n), dtype=np.float32)
        rows, columns, values = self._entries(np.arange(min(n, self.sizes.shape[0])))
        inside = columns < n
        out[rows[inside], columns[inside]] = values[inside]
        return out

    def state(self, name: str, n: int) -> dict[str, NDArray[Any]]:
        """The first ``n`` rows as CSR arrays (``{name}.indptr``, ``.columns``, ``.values``; columns ascending)."""
        rows, columns, values = self._entries(np.arange(min(n, self.sizes.shape[0])))
        inside = columns < n
        rows, columns, values = rows[inside], columns[inside], values[inside]
        order = np.lexsort((columns, rows))
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
        return {
            f"{name}.indptr": indptr,
            f"{name}.columns": columns[order].astype(np.int32),
            f"{name}.values": values[order],
        }

    def restore(self, arrays: Mapping[str, NDArray[Any]], name: str, n: int) -> None:
        """Rows from :meth:`state`, or from a dense ``(n, n)`` matrix saved under ``name`` (cut back to ``keep``
        columns where a row holds more than ``limit``)."""
        if name in arrays:
            saved = np.asarray(arrays[name])
            if saved.shape != (n, n):
                raise ModelLoadError(f"saved {name} holds {saved.shape}, expected {(n, n)}")
            rows, columns = np.nonzero(saved)
            values = saved[rows, columns].astype(np.float32)
        else:
            rows, columns, values = _checked_csr(arrays, name, n)
        self._clear()
        self.grow(n)
        self.add(rows.astype(np.int64), columns.astype(np.int64), values)


PairCounts = DenseCounts | TopNeighbours


def _checked_csr(
    arrays: Mapping[str, NDArray[Any]], name: str, n: int
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]:
    """The ``(row, column, value)`` cells of CSR arrays saved by :meth:`TopNeighbours.state` over ``n`` items;
    :class:`ModelLoadError` when they are missing or inconsistent."""
    try:
        indptr = np.asarray(arrays[f"{name}.indptr"], dtype=np.int64)
        columns = np.asarray(arrays[f"{name}.columns"], dtype=np.int64)
        values = np.asarray(arrays[f"{name}.values"], dtype=np.float32)
    except KeyError as error:
        raise ModelLoadError(f"saved counts lack {error}") from error
    if indptr.shape != (n + 1,) or columns.ndim != 1 or values.shape != columns.shape:
        raise ModelLoadError(
            f"saved {name} rows do not fit {n} items: indptr {indptr.shape}, columns {columns.shape}, "
            f"values {values.shape}"
        )
    if indptr[0] != 0 or indptr[-1] != columns.size or (np.diff(indptr) < 0).any():
        raise ModelLoadError(f"saved {name} rows: indptr is not a CSR index of {columns.size} entries")
    if columns.size and (columns.min() < 0 or columns.max() >= n):
        raise ModelLoadError(f"saved {name} rows: columns outside 0..{n - 1}")
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    return rows, columns, values


def remapped_state(
    arrays: Mapping[str, NDArray[Any]], name: str, to_rows: NDArray[np.int64], n: int
) -> dict[str, NDArray[Any]]:
    """CSR rows saved by :meth:`TopNeighbours.state` over ``len(to_rows)`` items, moved to ``n`` items: old row
    (and column) ``i`` becomes ``to_rows[i]``; cells of items with ``to_rows[i] < 0`` are left out."""
    rows, columns, values = _checked_csr(arrays, name, to_rows.size)
    new_rows, new_columns = to_rows[rows], to_rows[columns]
    inside = (new_rows >= 0) & (new_columns >= 0)
    new_rows, new_columns, values = new_rows[inside], new_columns[inside], values[inside]
    order = np.lexsort((new_columns, new_rows))
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(new_rows, minlength=n), out=indptr[1:])
    return {
        f"{name}.indptr": indptr,
        f"{name}.columns": new_columns[order].astype(np.int32),
        f"{name}.values": values[order],
    }
