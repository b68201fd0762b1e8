"""Cell specifications shared by every backend.

A cell is named by a string: ``"rnn_tanh"``, ``"rnn_relu"``, ``"lstm"`` or ``"gru"``.
Gate order and count follow PyTorch exactly, so weights are laid out as in
``torch.nn.RNN/LSTM/GRU``: W_ih is (G*H, I), W_hh is (G*H, H), biases (G*H,).
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class CellSpec:
    name: str
    gates: int          # G: rows of W_ih / W_hh per hidden unit
    has_cell_state: bool  # LSTM carries c besides h
    gate_names: tuple
    code: int           # id passed to native kernels


CELLS = {
    "rnn_tanh": CellSpec("rnn_tanh", 1, False, ("h",), 0),
    "rnn_relu": CellSpec("rnn_relu", 1, False, ("h",), 1),
    "lstm": CellSpec("lstm", 4, True, ("i", "f", "g", "o"), 2),
    "gru": CellSpec("gru", 3, False, ("r", "z", "n"), 3),
}


def get_cell(name):
    """Return the CellSpec for ``name`` or raise a ValueError naming the choices."""
    try:
        return CELLS[name]
    except (KeyError, TypeError):
        raise ValueError(f"cell: expected one of {sorted(CELLS)}, got {name!r}") from None
