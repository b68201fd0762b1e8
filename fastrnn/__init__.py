"""fastrnn: fused-kernel RNN, LSTM and GRU for Python (NumPy reference, C/OpenMP, Numba CUDA)."""
from . import backends
from .backends.packed_weights import frozen_weights
from .cells import CELLS, get_cell
from .layers import GRU, LSTM, RNN, RNNBase
from .lookup import Lookup
from .threads import get_num_threads, set_num_threads

__version__ = "0.1.0"
__all__ = ["RNN", "LSTM", "GRU", "RNNBase", "Lookup", "CELLS", "get_cell", "backends",
           "set_num_threads", "get_num_threads", "frozen_weights", "__version__"]
