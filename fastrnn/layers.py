"""RNN, LSTM and GRU modules: parameters, layers, directions and dropout.

Everything here is backend-independent: each layer-direction is one call to the
backend's forward_layer / backward_layer (DESIGN.md's contract). Parameter names,
shapes and init follow torch.nn.RNN/LSTM/GRU, so state dicts move between the two.
"""
from collections import OrderedDict
import numbers

import numpy as np

from . import backends
from .backends.checks import is_device_array, overlapping
from .bf16 import check_precision
from .cells import get_cell
from .lookup import Lookup

# The modules take and return numpy arrays (backend='cuda' copies them to the GPU and back);
# the ways in for arrays already on a GPU, which use them in place:
DEVICE_ARRAY_HINT = (" (a CUDA device array: the modules take numpy arrays. Arrays on the GPU are used in "
                     "place by fastrnn.torch's modules on CUDA tensors, and by "
                     "fastrnn.backends.get('cuda').forward_layer / backward_layer)")


def positive_int(name, v, minimum=1):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {v!r}")
    return int(v)


def load_parameters(params, state_dict):
    """Copy state_dict's arrays into the live arrays of `params` (name -> array), by name:
    every key, shape and dtype is checked first, so a bad entry changes nothing."""
    if not hasattr(state_dict, "keys"):
        raise TypeError(f"state_dict: expected a mapping, got {type(state_dict).__name__}")
    missing = [k for k in params if k not in state_dict]
    unexpected = [k for k in state_dict if k not in params]
    if missing or unexpected:
        raise ValueError(f"state_dict: missing keys {missing}, unexpected keys {unexpected}")
    new = {}
    for k, p in params.items():
        v = np.asarray(state_dict[k])
        if v.shape != p.shape:
            raise ValueError(f"state_dict[{k!r}]: expected shape {p.shape}, got {v.shape}")
        if v.dtype.kind != "f":
            raise TypeError(f"state_dict[{k!r}]: expected a floating dtype, got {v.dtype}")
        new[k] = v
    for k, v in new.items():
        params[k][...] = v


def _rnn_kwargs(m, nonlinearity=None):
    """Constructor keywords shared by fastrnn and torch modules (read off either kind)."""
    kw = dict(num_layers=m.num_layers, bias=m.bias, batch_first=m.batch_first,
              dropout=float(m.dropout), bidirectional=m.bidirectional)
    if nonlinearity:
        kw["nonlinearity"] = nonlinearity
    if getattr(m, "proj_size", 0):
        kw["proj_size"] = int(m.proj_size)
    return kw


class RNNBase:
    """Shared machinery of RNN, LSTM and GRU (see their docstrings)."""

    def __init__(self, cell, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, backend="auto", dtype=np.float32, seed=None,
                 proj_size=0, precision="float32"):
        self.cell = get_cell(cell)
        self.input_size = positive_int("input_size", input_size)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.proj_size = positive_int("proj_size", proj_size, minimum=0)
        if self.proj_size and (not self.cell.has_cell_state or self.proj_size >= self.hidden_size):
            raise ValueError(f"proj_size: expected 0, or for an LSTM 1 .. hidden_size - 1 "
                             f"({self.hidden_size - 1}), got {proj_size!r}")
        # the width of h and of each direction's output: proj_size when there is a projection
        self.state_size = self.proj_size or self.hidden_size
        self.num_layers = positive_int("num_layers", num_layers)
        if not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
            raise ValueError(f"dropout: expected a number in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if bidirectional else 1
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {self.dtype}")
        backends.resolve(backend)  # reject unknown names now, not at the first call
        self.backend = backend
        self.precision = check_precision(precision, self.dtype)
        self.training = True
        self._rng = np.random.default_rng(seed)
        self._params = OrderedDict()
        self.grads = OrderedDict()
        self._init_parameters()
        self._saved = None

    def __getstate__(self):
        # pickle and copy.deepcopy: a pending backward (the last training forward's saved
        # state, which refers to the backend module) is not carried over
        state = self.__dict__.copy()
        state["_saved"] = None
        return state

    # ----- parameters -------------------------------------------------------------
    def _suffix(self, layer, direction):
        return f"l{layer}" + ("_reverse" if direction == 1 else "")

    def _init_parameters(self):
        H, G, R = self.hidden_size, self.cell.gates, self.state_size
        k = 1.0 / np.sqrt(H)
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else R * self.num_directions
            for d in range(self.num_directions):
                s = self._suffix(layer, d)
                shapes = [(f"weight_ih_{s}", (G * H, in_size)), (f"weight_hh_{s}", (G * H, R))]
                if self.bias:
                    shapes += [(f"bias_ih_{s}", (G * H,)), (f"bias_hh_{s}", (G * H,))]
                if self.proj_size:
                    shapes += [(f"weight_hr_{s}", (R, H))]
                for name, shape in shapes:
                    self._params[name] = self._rng.uniform(-k, k, size=shape).astype(self.dtype)
                    self.grads[name] = np.zeros(shape, self.dtype)

    def named_parameters(self):
        """(name, array) pairs in PyTorch's order; the arrays are live (updated in place)."""
        return list(self._params.items())

    def parameters(self):
        return list(self._params.values())

    def zero_grad(self):
        backends.zero_fill(self.grads.values())

    def state_dict(self):
        """Copies of the parameters under PyTorch's names."""
        return OrderedDict((k, v.copy()) for k, v in self._params.items())

    def load_state_dict(self, state_dict):
        """Load parameters by PyTorch's names; values are copied into the live arrays."""
        load_parameters(self._params, state_dict)

    # ----- PyTorch round trips ----------------------------------------------------
    @classmethod
    def from_torch(cls, module, **kw):
        """A fastrnn module with the configuration and weights of a torch.nn.RNN/LSTM/GRU
        (extra keywords: backend=, dtype=, seed=)."""
        import torch
        kinds = {RNN: torch.nn.RNN, LSTM: torch.nn.LSTM, GRU: torch.nn.GRU}
        if cls not in kinds:
            raise TypeError("from_torch: call it on fastrnn.RNN, fastrnn.LSTM or fastrnn.GRU")
        if not isinstance(module, kinds[cls]):
            raise TypeError(f"module: expected a {kinds[cls].__name__}, got {type(module).__name__}")
        args = _rnn_kwargs(module, module.nonlinearity if cls is RNN else None)
        kw.setdefault("dtype", {torch.float64: np.float64}.get(module.weight_ih_l0.dtype, np.float32))
        m = cls(module.input_size, module.hidden_size, **args, **kw)
        m.load_state_dict({k: v.detach().cpu().numpy() for k, v in module.state_dict().items()})
        return m

    def to_torch(self):
        """The equivalent torch.nn.RNN/LSTM/GRU with these weights (same dtype)."""
        import torch
        kind = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}.get(self.cell.name, torch.nn.RNN)
        dtype = torch.float64 if self.dtype == np.float64 else torch.float32
        nonlin = self.cell.name[4:] if self.cell.name.startswith("rnn_") else None
        t = kind(self.input_size, self.hidden_size, dtype=dtype, **_rnn_kwargs(self, nonlin))
        t.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in self._params.items()})
        return t

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def _layer_weights(self, layer, d):
        s = self._suffix(layer, d)
        p = self._params
        return (p[f"weight_ih_{s}"], p[f"weight_hh_{s}"],
                p.get(f"bias_ih_{s}"), p.get(f"bias_hh_{s}"))

    def _projection(self, layer, d):
        """forward_layer's w_hr keyword for an LSTM with a projection, else none."""
        return {"w_hr": self._params[f"weight_hr_{self._suffix(layer, d)}"]} if self.proj_size else {}

    # ----- forward ----------------------------------------------------------------
    def __call__(self, x, hx=None, lengths=None):
        return self.forward(x, hx, lengths)

    def _check_state(self, name, a, B, unbatched, H=None):
        """H: the state's width (hidden_size, or proj_size for h with a projection)."""
        L, H = self.num_layers * self.num_directions, H or self.hidden_size
        want = (L, H) if unbatched else (L, B, H)
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}"
                            + DEVICE_ARRAY_HINT * is_device_array(a))
        if a.shape != want:
            width = "proj_size" if H != self.hidden_size else "hidden_size"
            raise ValueError(f"{name}: expected shape {want} (num_layers*num_directions, "
                             f"{'' if unbatched else 'batch, '}{width}), got {a.shape}")
        if a.dtype != self.dtype:
            raise TypeError(f"{name}: expected dtype {self.dtype}, got {a.dtype}")
        a = a[:, None, :] if unbatched else a
        return np.ascontiguousarray(a)

    def _split_hx(self, hx, B, unbatched):
        L, H, R = self.num_layers * self.num_directions, self.hidden_size, self.state_size
        if self.cell.has_cell_state:
            if hx is None:
                return np.zeros((L, B, R), self.dtype), np.zeros((L, B, H), self.dtype)
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("hx: expected a tuple (h_0, c_0) for LSTM")
            return (self._check_state("hx[0] (h_0)", hx[0], B, unbatched, R),
                    self._check_state("hx[1] (c_0)", hx[1], B, unbatched))
        if hx is None:
            return np.zeros((L, B, H), self.dtype), None
        return self._check_state("hx", hx, B, unbatched), None

    def _time_major(self, x, lengths):
        """x as a time-major (T, B, I) array (or Lookup), and whether it was unbatched."""
        lookup = isinstance(x, Lookup)
        if not (lookup or isinstance(x, np.ndarray)):
            raise TypeError(f"x: expected a numpy.ndarray or a fastrnn.Lookup, got {type(x).__name__}"
                            + DEVICE_ARRAY_HINT * is_device_array(x))
        if x.dtype != self.dtype:
            raise TypeError(f"x: expected dtype {self.dtype} (the module's dtype), got {x.dtype}")
        if x.ndim not in (2, 3) or x.shape[-1] != self.input_size:
            raise ValueError(f"x: expected shape (T, B, {self.input_size}), (B, T, {self.input_size}) "
                             f"with batch_first or (T, {self.input_size}) unbatched, got {x.shape}")
        unbatched = x.ndim == 2
        if unbatched and lengths is not None:
            raise ValueError("lengths: expected None for unbatched (2-D) input")
        if lookup:
            if unbatched:
                return Lookup(x.table, x.ids[:, None]), True
            return (x.transpose_ids() if self.batch_first else x), False
        xt = x[:, None, :] if unbatched else (x.transpose(1, 0, 2) if self.batch_first else x)
        return np.ascontiguousarray(xt), unbatched

    def forward(self, x, hx=None, lengths=None):
        """Run the stack. x is (T, B, I), (B, T, I) with batch_first, or unbatched (T, I);
        or a fastrnn.Lookup (embedding rows by id), whose gradient is the table's.

        Returns out, h_n (out, (h_n, c_n) for LSTM) in the input's layout; out is zero past
        each sequence's length.
        """
        xt, unbatched = self._time_major(x, lengths)
        T, B = xt.shape[:2]
        h0, c0 = self._split_hx(hx, B, unbatched)
        be = backends.get(backends.resolve(self.backend))
        table_input = isinstance(xt, Lookup)
        scatter = None   # a Lookup expanded for a backend that takes dense x: backward scatters dx
        if table_input and (self.proj_size or not getattr(be, "accepts_lookup", False)):
            xt, scatter = xt.dense(), xt
        train = self.training
        layer_kw = self._precision_kwargs(be)
        D = self.num_directions
        h_n = np.empty_like(h0)
        c_n = np.empty_like(c0) if c0 is not None else None
        saved_layers = []
        inp = xt
        for layer in range(self.num_layers):
            outs, saved_dirs = [], []
            for d in range(D):
                idx = layer * D + d
                y, hT, cT, saved = be.forward_layer(
                    self.cell.name, inp, h0[idx], None if c0 is None else c0[idx],
                    *self._layer_weights(layer, d), lengths=lengths, reverse=(d == 1), train=train,
                    **self._projection(layer, d), **layer_kw)
                outs.append(y)
                saved_dirs.append(saved)
                h_n[idx] = hT
                if c_n is not None:
                    c_n[idx] = cT
            out = outs[0] if D == 1 else np.concatenate(outs, axis=2)
            mask = None
            if train and self.dropout > 0 and layer < self.num_layers - 1:
                keep = 1.0 - self.dropout
                mask = (self._rng.random(out.shape) < keep).astype(self.dtype) / self.dtype.type(keep)
                out = out * mask
            saved_layers.append((saved_dirs, mask))
            inp = out
        self._saved = None
        if train:
            self._saved = dict(layers=saved_layers, backend=be, T=T, B=B, unbatched=unbatched,
                               table_input=table_input, scatter=scatter)
        out = inp
        if unbatched:
            out, h_n = out[:, 0], h_n[:, 0]
            c_n = None if c_n is None else c_n[:, 0]
        elif self.batch_first:
            out = np.ascontiguousarray(out.transpose(1, 0, 2))
        return (out, (h_n, c_n)) if self.cell.has_cell_state else (out, h_n)

    def _precision_kwargs(self, be):
        """forward_layer's precision keyword: none for float32 (every backend's default),
        else checked here first, with errors that name what to change."""
        precision = check_precision(self.precision, self.dtype)   # the attribute may be set by hand
        if precision == "float32":
            return {}
        reason = backends.why_no_bf16(be)
        if reason:
            raise RuntimeError(f"precision='bfloat16': {reason}")
        return {"precision": precision}

    # ----- backward ---------------------------------------------------------------
    def backward(self, grad_out, grad_hn=None):
        """Backprop through the last forward. Accumulates parameter gradients into
        ``self.grads`` and returns grad_x, grad_hx (grad_hx is (dh_0, dc_0) for LSTM).
        For a Lookup input, grad_x is the gradient for its table (V, I)."""
        s = self._saved
        if s is None:
            raise ValueError("backward: no saved forward pass; call forward in training mode "
                             "(m.train()) before backward (each forward allows one backward)")
        T, B, unbatched = s["T"], s["B"], s["unbatched"]
        H, D, L, R = self.hidden_size, self.num_directions, self.num_layers, self.state_size
        out_shape = (T, D * R) if unbatched else ((B, T, D * R) if self.batch_first else (T, B, D * R))
        dy = self._check_grad("grad_out", grad_out, out_shape)
        if dy is not None:
            dy = dy[:, None, :] if unbatched else (dy.transpose(1, 0, 2) if self.batch_first else dy)
        dh_n, dc_n = self._split_grad_hn(grad_hn, B, unbatched)
        be = s["backend"]
        dh0 = np.zeros((L * D, B, R), self.dtype)
        dc0 = np.zeros((L * D, B, H), self.dtype) if self.cell.has_cell_state else None
        for layer in range(L - 1, -1, -1):
            saved_dirs, mask = s["layers"][layer]
            if dy is not None and mask is not None:
                dy = dy * mask
            dx = None
            for d in range(D):
                idx = layer * D + d
                dy_d = None if dy is None else np.ascontiguousarray(dy[:, :, d * R:(d + 1) * R])
                sfx = self._suffix(layer, d)
                # running gradients added in place by the backend (not with a projection)
                in_place = getattr(be, "accumulates_grads", False) and not self.proj_size
                grads = self._layer_grads(sfx) if in_place else None
                kw = {} if grads is None else {"grads_out": grads}
                gx, gh0, gc0, dw_ih, dw_hh, db_ih, db_hh, *dw_hr = be.backward_layer(
                    self.cell.name, saved_dirs[d], dy_d,
                    None if dh_n is None else dh_n[idx], None if dc_n is None else dc_n[idx], **kw)
                if dw_hr:
                    self.grads[f"weight_hr_{sfx}"] += dw_hr[0]
                dx = gx if dx is None else dx + gx
                dh0[idx] = gh0
                if dc0 is not None:
                    dc0[idx] = gc0
                if grads is None:
                    self.grads[f"weight_ih_{sfx}"] += dw_ih
                    self.grads[f"weight_hh_{sfx}"] += dw_hh
                    if self.bias:
                        self.grads[f"bias_ih_{sfx}"] += db_ih
                        self.grads[f"bias_hh_{sfx}"] += db_hh
            dy = dx
        self._saved = None
        if s["scatter"] is not None:
            dx = s["scatter"].table_grad(dx)
        table_grad = s["table_input"]   # a Lookup's (V, I) gradient has no time axis
        if unbatched:
            dh0 = dh0[:, 0]
            dc0 = None if dc0 is None else dc0[:, 0]
            dx = dx if table_grad else dx[:, 0]
        elif self.batch_first and not table_grad:
            dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
        return (dx, (dh0, dc0)) if self.cell.has_cell_state else (dx, dh0)

    def _layer_grads(self, sfx):
        """The running gradients of one layer-direction for a backend that adds into them
        (dw_ih, dw_hh, db_ih, db_hh), or None if they are not separate writeable contiguous
        arrays of the parameters' shapes and dtype (someone replaced them: then the sums are
        added here). Without bias, fresh zero arrays take the bias sums."""
        names = [f"weight_ih_{sfx}", f"weight_hh_{sfx}"]
        if self.bias:
            names += [f"bias_ih_{sfx}", f"bias_hh_{sfx}"]
        arrays = [self.grads.get(n) for n in names]
        ok = all(isinstance(a, np.ndarray) and a.shape == self._params[n].shape and a.dtype == self.dtype
                 and a.flags.c_contiguous and a.flags.writeable for n, a in zip(names, arrays))
        if not ok or overlapping(arrays):
            return None
        if not self.bias:
            gh = self.cell.gates * self.hidden_size
            arrays += [np.zeros(gh, self.dtype), np.zeros(gh, self.dtype)]
        return tuple(arrays)

    def _check_grad(self, name, g, shape):
        if g is None:
            return None
        if not isinstance(g, np.ndarray):
            raise TypeError(f"{name}: expected a numpy.ndarray, got {type(g).__name__}"
                            + DEVICE_ARRAY_HINT * is_device_array(g))
        if g.shape != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {g.shape}")
        if g.dtype != self.dtype:
            raise TypeError(f"{name}: expected dtype {self.dtype}, got {g.dtype}")
        return g

    def _split_grad_hn(self, grad_hn, B, unbatched):
        L, H, R = self.num_layers * self.num_directions, self.hidden_size, self.state_size
        shape = (L, H) if unbatched else (L, B, H)
        shape_h = (L, R) if unbatched else (L, B, R)
        if grad_hn is None:
            return None, None
        if self.cell.has_cell_state:
            if not isinstance(grad_hn, (tuple, list)) or len(grad_hn) != 2:
                raise TypeError("grad_hn: expected a tuple (grad_h_n, grad_c_n) for LSTM (entries may be None)")
            gh, gc = (self._check_grad(f"grad_hn[{i}]", g, sh)
                      for i, (g, sh) in enumerate(zip(grad_hn, (shape_h, shape))))
        else:
            gh, gc = self._check_grad("grad_hn", grad_hn, shape), None
        if unbatched:
            gh = None if gh is None else gh[:, None, :]
            gc = None if gc is None else gc[:, None, :]
        return (None if gh is None else np.ascontiguousarray(gh),
                None if gc is None else np.ascontiguousarray(gc))

    def __repr__(self):
        extra = f", num_layers={self.num_layers}" if self.num_layers != 1 else ""
        extra += ", bidirectional=True" if self.bidirectional else ""
        extra += ", batch_first=True" if self.batch_first else ""
        extra += f", dropout={self.dropout}" if self.dropout else ""
        extra += f", proj_size={self.proj_size}" if self.proj_size else ""
        extra += f", precision={self.precision!r}" if self.precision != "float32" else ""
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}{extra}, "
                f"cell={self.cell.name!r}, backend={self.backend!r}, dtype={self.dtype.name})")


class RNN(RNNBase):
    """Elman RNN, h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, **kw):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(f"rnn_{nonlinearity}", input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, **kw)


class LSTM(RNNBase):
    """LSTM with PyTorch's gate order (i, f, g, o); returns out, (h_n, c_n). proj_size=P > 0
    adds PyTorch's projection h = W_hr (o * tanh(c)) (weight_hr_l{k}, P wide h and outputs)
    on every backend."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, **kw):
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, **kw)


class GRU(RNNBase):
    """GRU with PyTorch's gate order (r, z, n) and n = tanh(W_in x + b_in + r*(W_hn h + b_hn))."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, **kw):
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, **kw)
