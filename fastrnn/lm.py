"""RNN language model: embedding -> dropout -> RNN/LSTM/GRU stack -> dropout -> linear
projection (optionally tied to the embedding) -> softmax cross-entropy (fused with its
gradient). Runs on every backend: the cpu backend computes the projection and the loss with
the fastrnn C kernels, the reference backend with NumPy. An LSTM stack may project its
state to proj_size (PyTorch's LSTM proj_size): the outputs, and so the decoder's rows, are
then proj_size wide, which makes the softmax layer hidden_size / proj_size times smaller."""
from collections import OrderedDict
import contextlib
import math
import numbers

import numpy as np

from . import backends
from .backends.packed_weights import frozen_weights
from .backends.pool import aligned_empty
from .bf16 import check_precision
from .layers import GRU, LSTM, RNN, load_parameters, positive_int
from .lookup import Lookup

LN2 = math.log(2.0)


def _dense_ops(backend_name):
    """The module with the backend's matmul, softmax_xent and scatter_rows (cpu: C
    kernels; otherwise the NumPy reference's)."""
    name = backends.resolve(backend_name)
    return backends.get("cpu" if name == "cpu" else "reference")


class RNNLM:
    def __init__(self, vocab_size, hidden_size=256, num_layers=2, cell="lstm", emb_size=None,
                 dropout=0.0, tie_weights=False, *, proj_size=0, backend="auto", dtype=np.float32, seed=None,
                 precision="float32"):
        """precision: the products of the RNN stack and of the decoder (the logits and their
        two gradients) in training and evaluation ('bfloat16': see fastrnn/bf16.py; the
        embedding, the loss, every sum and the weights stay in dtype). generate() takes
        its own."""
        hidden_size = positive_int("hidden_size", hidden_size)
        proj_size = positive_int("proj_size", proj_size, minimum=0)
        if proj_size and cell != "lstm":
            raise ValueError(f"proj_size: only an LSTM has a projection, got cell {cell!r}")
        out_size = proj_size or hidden_size   # the width of the stack's outputs and of h
        self.config = dict(vocab_size=positive_int("vocab_size", vocab_size), hidden_size=hidden_size,
                           num_layers=positive_int("num_layers", num_layers), cell=cell,
                           emb_size=out_size if emb_size is None else positive_int("emb_size", emb_size),
                           dropout=float(dropout), tie_weights=bool(tie_weights), proj_size=proj_size)
        V, H, E = self.config["vocab_size"], hidden_size, self.config["emb_size"]
        if tie_weights and E != out_size:
            what = "proj_size" if proj_size else "hidden_size"
            raise ValueError(f"tie_weights: needs emb_size == {what}, got {E} and {out_size}")
        if not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
            raise ValueError(f"dropout: expected a number in [0, 1), got {dropout!r}")
        self.dtype = np.dtype(dtype)
        self.backend = backend
        self._rng = np.random.default_rng(seed)
        kw = dict(num_layers=self.config["num_layers"], dropout=dropout, backend=backend, dtype=dtype,
                  seed=int(self._rng.integers(2 ** 31)), precision=precision)
        if cell in ("rnn_tanh", "rnn_relu"):
            self.rnn = RNN(E, H, nonlinearity=cell[4:], **kw)
        elif cell == "lstm":
            self.rnn = LSTM(E, H, proj_size=proj_size, **kw)
        elif cell == "gru":
            self.rnn = GRU(E, H, **kw)
        else:
            raise ValueError(f"cell: expected one of rnn_tanh, rnn_relu, lstm, gru, got {cell!r}")
        self.precision = self.rnn.precision   # checked by the stack's constructor
        self.embedding = self._rng.uniform(-0.1, 0.1, (V, E)).astype(dtype)
        self.decoder_weight = self.embedding if tie_weights else \
            self._rng.uniform(-1 / math.sqrt(out_size), 1 / math.sqrt(out_size), (V, out_size)).astype(dtype)
        self.decoder_bias = np.zeros(V, dtype)
        # the RNN stack's gradients are its own arrays: its backward accumulates into them
        rnn_grads = {f"rnn.{n}": g for n, g in self.rnn.grads.items()}
        self.grads = OrderedDict((n, rnn_grads[n] if n in rnn_grads else np.zeros_like(p))
                                 for n, p in self.named_parameters())
        self.training = True
        self._cache = None
        self._logits = None   # forward's scratch for the logits and their gradient
        self._decoder_bits = None   # the decoder's weights as bfloat16 bits, inside _generation_precision

    def __getstate__(self):
        # pickle and copy.deepcopy carry the parameters, not a pending backward
        state = self.__dict__.copy()
        state["_cache"] = None
        state["_logits"] = None   # scratch
        return state

    # ----- parameters -------------------------------------------------------------
    def named_parameters(self):
        out = [("embedding.weight", self.embedding)]
        out += [(f"rnn.{n}", p) for n, p in self.rnn.named_parameters()]
        if not self.config["tie_weights"]:
            out.append(("decoder.weight", self.decoder_weight))
        out.append(("decoder.bias", self.decoder_bias))
        return out

    def zero_grad(self):
        backends.zero_fill(self.grads.values())

    def state_dict(self):
        return OrderedDict((n, p.copy()) for n, p in self.named_parameters())

    def load_state_dict(self, sd):
        """Load parameters by name, copied into the live arrays; all or nothing."""
        load_parameters(OrderedDict(self.named_parameters()), sd)

    def train(self, mode=True):
        self.training = bool(mode)
        self.rnn.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def init_hidden(self, batch):
        L, H = self.config["num_layers"], self.config["hidden_size"]
        h = np.zeros((L, batch, self.config["proj_size"] or H), self.dtype)
        return (h, np.zeros((L, batch, H), self.dtype)) if self.config["cell"] == "lstm" else h

    def to_torch(self):
        """The same model as a torch.nn.Module (fastrnn.lm_torch.TorchRNNLM, needs PyTorch)
        with copies of these weights: parameter names, loss and hidden state as here."""
        import torch
        from .lm_torch import TorchRNNLM
        dtype = torch.float64 if self.dtype == np.float64 else torch.float32
        t = TorchRNNLM(self.config, dtype=dtype)
        state = {n: torch.from_numpy(p.copy()) for n, p in self.named_parameters()}
        if self.config["tie_weights"]:
            state["decoder.weight"] = state["embedding.weight"]
        t.load_state_dict(state)
        return t

    # ----- forward / backward -----------------------------------------------------
    def _dropout(self, a):
        p = self.config["dropout"]
        if not self.training or p == 0:
            return a, None
        mask = (self._rng.random(a.shape) >= p).astype(self.dtype) / self.dtype.type(1 - p)
        return a * mask, mask

    def logits(self, tokens, hidden=None):
        """(T, B, V) logits and the final hidden state (no gradient kept)."""
        was = self.training
        self.eval()
        try:
            out, hidden, _ = self._features(tokens, hidden)
            ops = _dense_ops(self.backend)
            x2 = out.reshape(-1, out.shape[-1])
            bits = getattr(self, "_decoder_bits", None)   # set inside _generation_precision
            if bits is not None:
                flat = ops.dense_bf16(np.ascontiguousarray(x2), bits, self.decoder_bias)
            else:
                flat = ops.matmul(x2, self.decoder_weight.T)
                flat += self.decoder_bias
            return flat.reshape(out.shape[0], out.shape[1], self.config["vocab_size"]), hidden
        finally:
            self.train(was)

    def _ids(self, name, a, shape=None):
        """a as an integer array of token ids in [0, vocab_size), 2-D (of `shape` if given)."""
        a = np.asarray(a)
        if (a.ndim != 2 if shape is None else a.shape != shape) or a.dtype.kind not in "iu":
            raise ValueError(f"{name}: expected a {shape or '(T, B)'} integer array, got {a.dtype} {a.shape}")
        V = self.config["vocab_size"]
        if a.size and (a.min() < 0 or a.max() >= V):
            raise ValueError(f"{name}: expected ids in [0, {V}), got [{a.min()}, {a.max()}]")
        return a

    def _features(self, tokens, hidden):
        """The stack's output and final state, and what backward needs of the dropout and
        embedding (emb_dense, emb_mask, out_mask). The stack keeps only the last call's
        backward, so any earlier forward's is dropped here."""
        self._cache = None
        tokens = self._ids("tokens", tokens)
        lookup = Lookup(self.embedding, tokens)
        # The embedding goes in as rows by token (the cpu backend folds it into layer 0's
        # projection and returns the table's gradient) unless dropout applies to it, or
        # the table has more rows than there are tokens: the backends would expand it
        # anyway, and backward scatters the rows' gradient straight into the running one
        # (no zero-filled V x E table added in a second pass: 6 ms of a word LSTM step).
        emb_dense = (self.training and self.config["dropout"] > 0) or self.embedding.shape[0] > tokens.size
        emb_mask = None
        if emb_dense:
            emb, emb_mask = self._dropout(lookup.dense())
            emb = np.ascontiguousarray(emb)
        else:
            emb = lookup
        out, hidden = self.rnn(emb, hidden)
        out, out_mask = self._dropout(out)
        return out, hidden, (emb_dense, emb_mask, out_mask)

    def forward(self, tokens, targets, hidden=None):
        """Mean cross-entropy (nats per token) of predicting targets (T, B) from tokens
        (T, B), and the final hidden state (a plain array: detached by construction)."""
        if np.ndim(tokens) == 2 and np.size(tokens) == 0:   # a mean over no tokens
            raise ValueError(f"tokens: expected at least one token (T, B >= 1), got shape {np.shape(tokens)}")
        out, hidden, masks = self._features(tokens, hidden)
        T, B, H = out.shape
        targets = self._ids("targets", targets, (T, B))
        ops = _dense_ops(self.backend)
        matmul, softmax_xent = ops.matmul, ops.softmax_xent
        x2 = out.reshape(T * B, H)
        n = T * B
        precision = self.rnn.precision   # the decoder's products are the stack's
        logits = matmul(x2, self.decoder_weight.T, out=self._logits_buffer(n), precision=precision)
        logits += self.decoder_bias
        # the gradient overwrites the logits: one (T*B, V) array, not two
        loss, dlogits = softmax_xent(logits, targets.reshape(-1), 1.0 / n, want_grad=self.training,
                                     in_place=True)
        mean = float(loss.sum(dtype=np.float64) / n)
        self._cache = (np.asarray(tokens), x2, dlogits, (T, B, H), masks, precision) if self.training else None
        return mean, hidden

    def _logits_buffer(self, n):
        """The (n, V) array forward's logits (then their gradient) go to, kept from the last
        call of this size: at V = 10,000 a fresh one each step spent 20 ms of a 280 ms word
        LSTM step zeroing new pages. Only forward writes it, and a forward's logits are
        dead by the next forward (backward uses the last forward's)."""
        buf = getattr(self, "_logits", None)   # (absent in a model pickled before it existed)
        if buf is None or buf.shape[0] != n:
            buf = self._logits = aligned_empty((n, self.config["vocab_size"]), self.dtype)
        return buf

    def backward(self):
        """Gradients of the last forward's mean loss, accumulated into self.grads."""
        if self._cache is None:
            raise ValueError("backward: no saved forward pass; call forward in training mode first")
        tokens, x2, dlogits, (T, B, H), (emb_dense, emb_mask, out_mask), precision = self._cache
        self._cache = None
        ops = _dense_ops(self.backend)
        matmul = ops.matmul
        dec_w = "embedding.weight" if self.config["tie_weights"] else "decoder.weight"
        matmul(dlogits.T, x2, out=self.grads[dec_w], accumulate=True, precision=precision)
        self.grads["decoder.bias"] += dlogits.sum(axis=0)
        dout = matmul(dlogits, self.decoder_weight, precision=precision).reshape(T, B, H)
        if out_mask is not None:
            dout *= out_mask
        demb, _ = self.rnn.backward(dout)   # the table's gradient when the input was a Lookup
        if emb_dense:
            if emb_mask is not None:
                demb = demb * emb_mask
            ops.scatter_rows(self.grads["embedding.weight"], tokens.reshape(-1), demb.reshape(tokens.size, -1))
        else:
            self.grads["embedding.weight"] += demb

    # ----- evaluation and generation ----------------------------------------------
    def evaluate(self, data, bptt=128):
        """Mean loss (nats per token) over a (n, B) batchified stream, hidden carried."""
        from .data import bptt_windows
        was = self.training
        self.eval()
        total, count, hidden = 0.0, 0, None
        try:
            with frozen_weights():   # no step inside: the weights are checked once, not per window
                for _, x, y in bptt_windows(data, bptt):
                    loss, hidden = self.forward(x, y, hidden)
                    total += loss * y.size
                    count += y.size
        finally:
            self.train(was)
        return total / max(count, 1)

    def check_precision(self, precision):
        """Raise unless generate() can run at `precision` here, naming what to change
        (bfloat16: a float32 model on a backend with bfloat16 products)."""
        if check_precision(precision, self.dtype) == "bfloat16":
            for be in sorted({backends.resolve(self.backend), _dense_ops(self.backend).name}):
                why = backends.why_no_bf16(backends.get(be))
                if why:
                    raise RuntimeError(f"precision='bfloat16': {why}")
        return precision

    @contextlib.contextmanager
    def _generation_precision(self, precision):
        """`precision` for what runs inside (weights frozen there), whatever the model trains
        at. bfloat16: the RNN stack's products in bfloat16 (packed bfloat16 panels), and the
        logits' from a bfloat16 copy of the decoder's weights (half the bytes a token: at
        V = 10,000 they are most of it)."""
        self.check_precision(precision)
        saved = self.rnn.precision
        if precision == "bfloat16":
            self._decoder_bits = _dense_ops(self.backend).to_bf16_bits(self.decoder_weight)
        self.rnn.precision = precision
        try:
            yield
        finally:
            self.rnn.precision, self._decoder_bits = saved, None

    def generate(self, prompt_ids, length, *, temperature=1.0, top_k=0, greedy=False, beam=0, seed=None,
                 precision="float32"):
        """Token ids continuing prompt_ids: sampling (temperature, top-k), greedy, or beam
        search (beam > 1: the most likely continuation of the given length).
        precision='bfloat16': every product in bfloat16 (fastrnn/bf16.py; float32 models,
        no proj_size; the cpu backend on a CPU with AVX512_BF16, or the reference)."""
        length = positive_int("length", length, minimum=0)
        top_k = positive_int("top_k", top_k, minimum=0)
        beam = positive_int("beam", beam, minimum=0)
        if not isinstance(temperature, numbers.Real) or not temperature > 0:
            raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
        prompt = np.asarray(prompt_ids)
        if prompt.size == 0:
            prompt = np.zeros(1, np.int64)  # start from <unk>
        elif prompt.ndim != 1 or prompt.dtype.kind not in "iu":
            raise ValueError(f"prompt_ids: expected a 1-D sequence of integer token ids, "
                             f"got {prompt.dtype} {prompt.shape}")
        prompt = self._ids("prompt_ids", prompt[:, None])[:, 0].astype(np.int64)
        # one step a call: the weights' version check would cost more than the step
        with frozen_weights(), self._generation_precision(precision):
            if beam and beam > 1:
                return self._beam_search(prompt, length, beam)
            return self._sample(prompt, length, temperature, top_k, greedy, seed)

    def _sample(self, prompt, length, temperature, top_k, greedy, seed):
        rng = np.random.default_rng(seed)
        logits, hidden = self.logits(prompt[:, None])
        z = logits[-1, 0].astype(np.float64)
        out = []
        for _ in range(length):
            if greedy:
                nxt = int(np.argmax(z))
            else:
                z = z / temperature
                if top_k and top_k < z.size:
                    cut = np.partition(z, -top_k)[-top_k]
                    z = np.where(z >= cut, z, -np.inf)
                p = np.exp(z - z.max())
                p /= p.sum()
                nxt = int(rng.choice(p.size, p=p))
            out.append(nxt)
            logits, hidden = self.logits(np.array([[nxt]]), hidden)
            z = logits[-1, 0].astype(np.float64)
        return out

    def _beam_search(self, prompt, length, beam):
        logits, hidden = self.logits(prompt[:, None])
        beams = [(0.0, [], hidden, logits[-1, 0].astype(np.float64))]
        for _ in range(length):
            cands = []
            for score, seq, h, z in beams:
                logp = z - z.max() - np.log(np.exp(z - z.max()).sum())
                for tok in np.argsort(-logp)[:beam]:
                    cands.append((score + logp[tok], seq + [int(tok)], h))
            cands.sort(key=lambda c: -c[0])
            cands = cands[:beam]
            toks = np.array([[c[1][-1] for c in cands]])
            hid = _stack_hidden([c[2] for c in cands])
            logits, hid = self.logits(toks, hid)
            beams = [(c[0], c[1], _take_hidden(hid, i), logits[-1, i].astype(np.float64))
                     for i, c in enumerate(cands)]
        return beams[0][1]


def _stack_hidden(hs):
    if isinstance(hs[0], tuple):
        return tuple(np.concatenate([h[k] for h in hs], axis=1) for k in range(2))
    return np.concatenate(hs, axis=1)


def _take_hidden(h, i):
    if isinstance(h, tuple):
        return tuple(a[:, i:i + 1].copy() for a in h)
    return h[:, i:i + 1].copy()


def bits_per_token(loss_nats):
    return loss_nats / LN2


def perplexity(loss_nats):
    return math.exp(min(loss_nats, 700.0))


def unigram_baseline(train_ids, eval_ids, vocab_size):
    """Cross-entropy (nats/token) of eval_ids under train_ids' token frequencies (add-one)."""
    counts = np.bincount(train_ids, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[eval_ids].mean())
