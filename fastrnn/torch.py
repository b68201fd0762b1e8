"""Drop-in torch.nn.RNN / LSTM / GRU computed by fastrnn kernels (needs PyTorch).

    from fastrnn.torch import LSTM      # instead of torch.nn.LSTM
    lstm = LSTM(64, 256, num_layers=2, batch_first=True)
    lstm.load_state_dict(torch_lstm.state_dict())

The classes subclass torch's own, so the constructor, parameters (names, shapes, init),
state_dict, argument checks and outputs are torch's; only the computation differs: each
layer-direction runs as one torch.autograd.Function over a fastrnn backend. CPU tensors
reach the kernels without copies (numpy views), and so do CUDA tensors (the cuda backend
reads them through __cuda_array_interface__; backend='auto' picks it for them). Supported
inputs: (T, B, I), batch_first, unbatched (T, I), PackedSequence, with or without hx;
float32 and float64, and float16/bfloat16 computed in float32 (results in their dtypes),
except a bfloat16 module where the backend has bfloat16 products: its forward and backward
run those, as torch's own bfloat16 kernels compute, on its bfloat16 weights as they are.
torch.compile runs the modules between its graphs, never inside one (forward is
torch.compiler.disable'd).
"""
try:
    import torch
    from torch.nn.utils.rnn import PackedSequence
except ImportError as exc:  # keep torch optional for the rest of fastrnn
    raise ImportError("fastrnn.torch needs PyTorch: pip install 'fastrnn[torch]' "
                      "(or pip install torch)") from exc

import contextlib
import functools

import numpy as np

from . import backends

__all__ = ["RNN", "LSTM", "GRU"]


def _arr(t):
    """What a backend takes for tensor t, without a copy: a numpy view of a CPU tensor
    (of a bfloat16 one, its bits as uint16: numpy has no bfloat16), a CUDA tensor itself
    (read through __cuda_array_interface__); None stays None."""
    if t is None:
        return None
    t = t.detach()
    if t.is_cuda:
        return t
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _tensor(a, device):
    """A backend's result as a tensor on `device`, without a copy (numpy, or a device array
    through __cuda_array_interface__: the tensor keeps the array, so its buffer, alive)."""
    if a is None:
        return None
    return torch.from_numpy(a) if isinstance(a, np.ndarray) else torch.as_tensor(a, device=device)


@contextlib.contextmanager
def _backend_stream(device):
    """The cuda backend queues its work on the legacy default stream of the current device
    (numba follows the device torch makes current). Under another current torch stream,
    order that work after what the stream has queued (its inputs) and the stream's later
    work after it (its outputs)."""
    if device.type != "cuda":
        yield
        return
    with torch.cuda.device(device):
        current, default = torch.cuda.current_stream(), torch.cuda.default_stream()
        if current == default:
            yield
            return
        default.wait_stream(current)
        yield
        current.wait_stream(default)


class _Recycler:
    """Held by a call's autograd node only: when torch frees the graph (after backward
    without retain_graph, or when the outputs are dropped), the training workspace goes back
    to the backend's pool for the next forward instead of to the allocator. Backward keeps it
    (retain=True) since torch may run it twice. Without this, every training step took fresh
    memory for it and paid its page faults: a 241 MB workspace at LSTM H = 1024, proj_size
    256, B = 32, T = 256."""

    def __init__(self, backend, saved):
        self.backend, self.saved = backend, saved

    def __del__(self):
        try:
            self.backend.release_workspace(self.saved)
        except Exception:   # interpreter shutdown: the pool may be gone already
            pass


def _forward_layer(be, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, cell, reverse, train, bf16=False):
    """One layer-direction's forward on backend `be`: y, h_T and c_T as tensors on x's
    device (c_T empty for cells without a cell state), and the backend's `saved`.
    bf16: bfloat16 products (precision='bfloat16'), in the backward too."""
    kw = {} if w_hr is None else {"w_hr": _arr(w_hr)}
    if bf16:
        kw["precision"] = "bfloat16"
    with _backend_stream(x.device):
        y, h_T, c_T, saved = be.forward_layer(
            cell, _arr(x), _arr(h0), _arr(c0), _arr(w_ih), _arr(w_hh), _arr(b_ih), _arr(b_hh),
            lengths=lengths, reverse=reverse, train=train, **kw)
    out_c = _tensor(c_T, x.device) if c_T is not None else x.new_zeros(0)
    return _tensor(y, x.device), _tensor(h_T, x.device), out_c, saved


def _run_layer(args, lengths, cell, reverse, backend_name, train, bf16):
    """y, h_T, c_T of one layer-direction: through autograd when it records this call, else
    straight from the backend (autograd.Function.apply cost ~20 us a call: a decoding
    step's two layers spent more there than in the kernels)."""
    if train:
        return _LayerFunction.apply(*args, lengths, cell, reverse, backend_name, train, bf16)
    return _forward_layer(backends.get(backend_name), *args, lengths, cell, reverse, False, bf16)[:3]


def _first_order_only(backward):
    """Runs `backward` (whose gradients are the kernels', not themselves differentiable)
    only when autograd records no graph of it. torch's once_differentiable refuses only
    when a gradient flowing in requires grad; autograd.grad(loss, x, create_graph=True)
    passes ones that do not, and got first-order gradients that silently carried no graph
    (a gradient penalty made of them added nothing to the parameters' gradients)."""
    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if torch.is_grad_enabled():   # the engine sets grad mode to create_graph
            raise RuntimeError(
                "fastrnn.torch: double backward (create_graph=True, e.g. a gradient penalty) is not "
                "supported: the kernels' gradients are not differentiable. Use torch.nn's module for it")
        return backward(ctx, *grads)
    return wrapper


class _LayerFunction(torch.autograd.Function):
    """One layer in one direction; forward and backward through a fastrnn backend."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, cell, reverse, backend_name, train,
                bf16):
        """train: autograd records this call (the caller's grad mode, as torch decides it:
        inside forward grad mode is off, and needs_input_grad stays True for parameters
        even under no_grad). Without it no workspace is kept. w_hr: an LSTM's projection
        (proj_size > 0), else None. bf16: bfloat16 products (bfloat16 weights, held as they are)."""
        be = backends.get(backend_name)
        y, h_T, c_T, saved = _forward_layer(be, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, cell,
                                            reverse, train, bf16)
        ctx.backend, ctx.cell, ctx.saved_ws, ctx.device = be, cell, saved, x.device
        if saved is not None and hasattr(be, "release_workspace"):
            ctx.recycler = _Recycler(be, saved)
        ctx.has_bias = b_ih is not None
        if cell != "lstm":   # c_T is an empty placeholder
            ctx.mark_non_differentiable(c_T)
        return y, h_T, c_T

    @staticmethod
    @_first_order_only
    def backward(ctx, dy, dh_T, dc_T):
        if ctx.saved_ws is None:
            raise RuntimeError("fastrnn.torch: the forward ran without a workspace (no grad)")
        dc = _arr(dc_T.contiguous()) if ctx.cell == "lstm" and dc_T is not None else None
        with _backend_stream(ctx.device):
            grads = ctx.backend.backward_layer(
                ctx.cell, ctx.saved_ws, None if dy is None else _arr(dy.contiguous()),
                None if dh_T is None else _arr(dh_T.contiguous()), dc,
                need_dx=ctx.needs_input_grad[0], retain=True)  # torch may backprop twice (retain_graph)
        dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh = grads[:7]
        dw_hr = grads[7] if len(grads) > 7 else None   # with a projection
        t = lambda a: _tensor(a, ctx.device)
        bias = (t(db_ih), t(db_hh)) if ctx.has_bias else (None, None)
        return (t(dx), t(dh0), t(dc0) if ctx.cell == "lstm" else None, t(dw_ih), t(dw_hh),
                *bias, t(dw_hr), None, None, None, None, None, None)


def _bf16_products(backend_name):
    """Whether backend `backend_name` computes precision='bfloat16' here (the cpu backend
    where the CPU has AVX512_BF16, and the reference backend)."""
    return backends.why_no_bf16(backends.get(backend_name)) is None


def _compute_dtype(dtype):
    """The kernels' dtype for inputs of `dtype`: float32 and float64 as they are, float16
    and bfloat16 in float32 (results are cast back to the input's dtype)."""
    if dtype in (torch.float32, torch.float64):
        return dtype
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    raise NotImplementedError(f"dtype {dtype} is not supported by fastrnn.torch "
                              "(float32, float64, float16 and bfloat16 are)")


class _FastRNNMixin:
    """forward() of torch.nn.RNNBase, computed by fastrnn. `backend` picks the fastrnn
    backend ('auto': cpu when built, else reference)."""

    def _fastrnn_init(self, backend):
        backends.resolve(backend)
        self.backend = backend

    def _backend_for(self, x):
        """The backend name for input x: CUDA tensors need the cuda backend ('auto' picks it)."""
        if not x.is_cuda:
            return backends.resolve(self.backend)
        if self.backend not in ("auto", "cuda"):
            raise ValueError(f"backend: CUDA tensors need the cuda backend ('auto' or 'cuda'), "
                             f"got {self.backend!r}")
        why = backends.why_unavailable("cuda")
        if why:
            raise RuntimeError(f"fastrnn.torch: CUDA tensors need the cuda backend, which is not "
                               f"available here: {why}")
        return "cuda"

    @staticmethod
    def _check_devices(x, named):
        """Every tensor on x's device (the kernels read them all in one place). With x on
        the CPU, is_cpu says it (torch.device objects cost ~0.3 us each to make and compare)."""
        device = None if x.is_cpu else x.device
        for name, t in named:
            if t is not None and not (t.is_cpu if device is None else t.device == device):
                raise ValueError(f"{name}: expected a tensor on {x.device} (the input's device), "
                                 f"got one on {t.device}")

    def _weights(self):
        """The flat weights, by name rather than self._flat_weights, so functional_call
        (which swaps entries of _parameters) and parametrizations (whose names are
        properties, not in _parameters) are followed; getattr only for the latter, as a
        module's __getattr__ costs ~0.4 us a name."""
        params = self._parameters
        return [params[n] if n in params else getattr(self, n) for n in self._flat_weights_names]

    def _cell(self):
        if self.mode == "LSTM":
            return "lstm"
        if self.mode == "GRU":
            return "gru"
        return "rnn_tanh" if self.mode == "RNN_TANH" else "rnn_relu"

    def _layer_args(self, weights, idx, per, proj):
        """w_ih, w_hh, b_ih, b_hh, w_hr of layer-direction idx from the flat weight list."""
        w = weights[idx * per:(idx + 1) * per]
        b_ih, b_hh = (w[2], w[3]) if self.bias else (None, None)
        return w[0], w[1], b_ih, b_hh, (w[-1] if proj else None)

    def _dropout_between(self, layer):
        return self.dropout and self.training and layer < self.num_layers - 1

    def _forward_layers(self, x, h0, c0, weights, lengths, cell, backend, per, proj, lstm, D, bf16):
        """(out, h_n, c_n) as tensors, layer by layer through autograd where it records.
        bf16: bfloat16 products."""
        grad_on = torch.is_grad_enabled()
        h_n, c_n = [], []
        layer_in = x
        for layer in range(self.num_layers):
            outs = []
            for d in range(D):
                idx = layer * D + d
                args = (layer_in, h0[idx], c0[idx] if lstm else None, *self._layer_args(weights, idx, per, proj))
                train = grad_on and any(a is not None and a.requires_grad for a in args)
                y, hT, cT = _run_layer(args, lengths, cell, d == 1, backend, train, bf16)
                outs.append(y)
                h_n.append(hT)
                c_n.append(cT)
            out = outs[0] if D == 1 else torch.cat(outs, dim=2)
            if self._dropout_between(layer):
                out = torch.nn.functional.dropout(out, self.dropout, training=True)
            layer_in = out
        return out, torch.stack(h_n), (torch.stack(c_n) if lstm else None)

    def _forward_on_host(self, x, h0, c0, weights, lengths, cell, backend, per, proj, lstm, D, bf16):
        """_forward_layers for CPU tensors when autograd records nothing: the backend runs
        on numpy views of them, with no tensor made per layer (a decoding step's two
        layers spent more in those conversions than in the kernels)."""
        be = backends.get(backend)
        kw = {"precision": "bfloat16"} if bf16 else {}
        w = [_arr(t) for t in weights]
        h0, c0 = _arr(h0), _arr(c0)
        h_n, c_n = [], []
        layer_in = _arr(x)
        for layer in range(self.num_layers):
            outs = []
            for d in range(D):
                idx = layer * D + d
                w_ih, w_hh, b_ih, b_hh, w_hr = self._layer_args(w, idx, per, proj)
                y, hT, cT, _ = be.forward_layer(cell, layer_in, h0[idx], c0[idx] if lstm else None,
                                                w_ih, w_hh, b_ih, b_hh, lengths=lengths, reverse=d == 1,
                                                train=False, **({} if w_hr is None else {"w_hr": w_hr}), **kw)
                outs.append(y)
                h_n.append(hT)
                c_n.append(cT)
            layer_in = outs[0] if D == 1 else np.concatenate(outs, axis=2)
            if self._dropout_between(layer):
                dropped = torch.nn.functional.dropout(torch.from_numpy(layer_in), self.dropout, training=True)
                layer_in = dropped.numpy()
        return (torch.from_numpy(layer_in), torch.from_numpy(np.stack(h_n)),
                torch.from_numpy(np.stack(c_n)) if lstm else None)

    # torch.compile traces around this, not into it (a graph break): the kernels run on
    # numpy views and device arrays that dynamo cannot trace, and it failed on them
    @torch.compiler.disable
    def forward(self, input, hx=None):
        lstm = self.mode == "LSTM"
        D = 2 if self.bidirectional else 1
        packed = isinstance(input, PackedSequence)
        lengths = None
        if packed:
            data, batch_sizes, sorted_idx, unsorted_idx = input
            B, T = int(batch_sizes[0]), len(batch_sizes)
            # packed rows are (t, b) for b < batch_sizes[t], batch in sorted order
            mask = torch.arange(B).unsqueeze(0) < batch_sizes.unsqueeze(1)   # batch_sizes: CPU
            lengths = mask.sum(0).numpy().astype(np.int32)
            mask = mask.to(data.device)
            x = data.new_zeros((T, B, data.shape[-1]))
            x = x.masked_scatter(mask.unsqueeze(-1), data)
            unbatched = False
        else:
            unbatched = input.dim() == 2
            batch_sizes = sorted_idx = unsorted_idx = None
            x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
            T, B = x.shape[0], x.shape[1]
        proj = getattr(self, "proj_size", 0)   # LSTM: h is proj_size wide, c hidden_size
        if hx is None:
            h0 = x.new_zeros((self.num_layers * D, B, proj or self.hidden_size))
            c0 = x.new_zeros((self.num_layers * D, B, self.hidden_size)) if lstm else None
        else:
            if unbatched:
                hx = tuple(h.unsqueeze(1) for h in hx) if lstm else hx.unsqueeze(1)
            if sorted_idx is not None:  # hx is in the caller's batch order
                hx = tuple(h.index_select(1, sorted_idx) for h in hx) if lstm else hx.index_select(1, sorted_idx)
            h0, c0 = hx if lstm else (hx, None)
        # torch's own argument checks, on the input as torch sees it at this point
        if packed:
            self.check_forward_args(data, (h0, c0) if lstm else h0, batch_sizes)
        else:
            batch_dim = 0 if self.batch_first else 1
            self.check_forward_args(input.unsqueeze(batch_dim) if unbatched else input,
                                    (h0, c0) if lstm else h0, None)

        out_dtype = x.dtype
        compute = _compute_dtype(x.dtype)
        backend = self._backend_for(x)
        cell = self._cell()
        weights = self._weights()
        self._check_devices(x, [("hx", h0), ("hx", c0), *zip(self._flat_weights_names, weights)])
        # a bfloat16 module computes what torch's does: bfloat16 products summed in float32,
        # where the backend has them (training too: its gradients come back in bfloat16)
        bf16 = (out_dtype == torch.bfloat16 and all(w.dtype == torch.bfloat16 for w in weights)
                and _bf16_products(backend))
        # float16/bfloat16 (or a mix under autocast) run in float32: differentiable casts,
        # so autograd returns each gradient in its tensor's own dtype. bfloat16 products
        # read bfloat16 weight matrices as they are (no float copy of them per call), except
        # with a projection, whose kernels read float weights (rounded again as they pack)
        to = lambda t: t if t is None or t.dtype == compute else t.to(compute)
        x, h0, c0 = to(x), to(h0), to(c0)
        weights = [w if bf16 and w.dim() == 2 and not proj else to(w) for w in weights]
        per = (4 if self.bias else 2) + (1 if proj else 0)   # w_ih, w_hh[, b_ih, b_hh][, w_hr]
        if torch.is_grad_enabled() or x.is_cuda:
            out, h_n, c_n = self._forward_layers(x.contiguous(), h0, c0, weights, lengths, cell, backend,
                                                 per, proj, lstm, D, bf16)
        else:   # nothing recorded, CPU tensors: the whole stack on numpy views
            out, h_n, c_n = self._forward_on_host(x, h0, c0, weights, lengths, cell, backend,
                                                  per, proj, lstm, D, bf16)
        out, h_n = out.to(out_dtype), h_n.to(out_dtype)
        c_n = c_n.to(out_dtype) if lstm else None

        if packed:
            output = PackedSequence(out[mask], batch_sizes, sorted_idx, unsorted_idx)
            if unsorted_idx is not None:
                h_n = h_n.index_select(1, unsorted_idx)
                c_n = c_n.index_select(1, unsorted_idx) if lstm else None
        elif unbatched:
            output, h_n = out.squeeze(1), h_n.squeeze(1)
            c_n = c_n.squeeze(1) if lstm else None
        else:
            output = out.transpose(0, 1) if self.batch_first else out
        return (output, (h_n, c_n)) if lstm else (output, h_n)


class RNN(_FastRNNMixin, torch.nn.RNN):
    """torch.nn.RNN computed by fastrnn (extra keyword: backend='auto')."""

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._fastrnn_init(backend)


class LSTM(_FastRNNMixin, torch.nn.LSTM):
    """torch.nn.LSTM computed by fastrnn (extra keyword: backend='auto'); proj_size > 0 runs
    on every backend (CUDA tensors included)."""

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._fastrnn_init(backend)


class GRU(_FastRNNMixin, torch.nn.GRU):
    """torch.nn.GRU computed by fastrnn (extra keyword: backend='auto')."""

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._fastrnn_init(backend)
