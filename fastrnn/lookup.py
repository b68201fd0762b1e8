"""Lookup: an RNN input given as rows of a table picked by integer ids, x = table[ids].

A language model's first layer reads embedding rows. Kept unexpanded, a backend can fold
the embedding into the input projection: project the V table rows once (V x I x G*H)
instead of all T*B inputs, and in BPTT sum the gate gradients per table row before the
weight products. The cpu backend does this (csrc: `tokens`); other backends get the dense
x = table[ids]. Either way the gradient for a Lookup input is the table's, (V, I).
"""
import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class Lookup:
    """x = table[ids] with table (V, I) float and ids (T, B) integers in [0, V)."""

    def __init__(self, table, ids):
        if not isinstance(table, np.ndarray) or table.ndim != 2 or table.dtype not in FLOAT_DTYPES:
            got = f"{table.dtype} {table.shape}" if isinstance(table, np.ndarray) else type(table).__name__
            raise TypeError(f"table: expected a 2-D float32 or float64 numpy.ndarray (V, I), got {got}")
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu" or ids.ndim not in (1, 2):
            raise TypeError(f"ids: expected a (T, B) or (T,) integer array, got {ids.dtype} {ids.shape}")
        V = table.shape[0]
        if ids.size and (ids.min() < 0 or ids.max() >= V):
            raise ValueError(f"ids: expected values in [0, {V}) (rows of the table), "
                             f"got min {ids.min()}, max {ids.max()}")
        self.table = table
        self.ids = ids

    @property
    def dtype(self):
        return self.table.dtype

    @property
    def ndim(self):
        return self.ids.ndim + 1

    @property
    def shape(self):
        return self.ids.shape + (self.table.shape[1],)

    def transpose_ids(self):
        """The same lookup with the two id axes swapped ((B, T) <-> (T, B))."""
        return Lookup(self.table, self.ids.T)

    def dense(self):
        """x itself: (*ids.shape, I)."""
        return self.table[self.ids]

    def table_grad(self, dx, add_to=None):
        """Gradient for the table from the gradient for x: dx rows summed per id. Sorting
        the ids and summing each run with reduceat is ~5x faster than np.add.at.
        add_to: an array of the table's shape that the sums are added into (only the rows
        of the ids are touched) and which is returned, instead of a new zero-filled one."""
        if add_to is None:
            grad = np.zeros_like(self.table)
        elif not isinstance(add_to, np.ndarray) or add_to.shape != self.table.shape:
            raise ValueError(f"add_to: expected an array of the table's shape {self.table.shape}")
        else:
            grad = add_to
        index = self.ids.reshape(-1)
        if index.size == 0:
            return grad
        rows = dx.reshape(index.size, -1)
        order = np.argsort(index, kind="stable")
        sorted_index = index[order]
        starts = np.flatnonzero(np.r_[True, sorted_index[1:] != sorted_index[:-1]])
        grad[sorted_index[starts]] += np.add.reduceat(rows[order], starts, axis=0)
        return grad
