"""Optimizers over a model's live parameter arrays and its `grads` dict, with PyTorch's
update rules (torch.optim.SGD / Adam), plus clipping by global norm."""
import math

import numpy as np

from . import backends


def finite_number(name, v, low, low_ok=True):
    """v as a float, a finite number >= low (> low with low_ok=False), else ValueError."""
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v) \
        and (v >= low if low_ok else v > low)
    if not ok:
        raise ValueError(f"{name}: expected a finite number {'>=' if low_ok else '>'} {low}, got {v!r}")
    return float(v)


class Optimizer:
    def __init__(self, model, lr):
        self.model = model
        self.lr = finite_number("lr", lr, 0, low_ok=False)
        self.state = {}
        self.steps = 0

    def _params(self):
        return [(n, p, self.model.grads[n]) for n, p in self.model.named_parameters()]

    def _cpu_backend(self):
        """The cpu backend module when the model runs on it (its fused optimizer kernels),
        else None: other backends' models step in NumPy, as the reference does."""
        name = getattr(self.model, "backend", "reference")
        return backends.get("cpu") if backends.resolve(name) == "cpu" else None

    def state_dict(self):
        """Arrays keyed 'name/slot' plus the step count and lr (for checkpoints)."""
        arrays = {f"{n}/{slot}": v for n, slots in self.state.items() for slot, v in slots.items()}
        return {"arrays": arrays, "steps": self.steps, "lr": self.lr}

    def load_state_dict(self, sd):
        self.steps, self.lr = int(sd["steps"]), float(sd["lr"])
        self.state = {}
        names = {n for n, _ in self.model.named_parameters()}
        for key, v in sd["arrays"].items():
            name, slot = key.rsplit("/", 1)
            if name not in names:
                raise ValueError(f"optimizer state: parameter {name!r} is not in the model")
            self.state.setdefault(name, {})[slot] = np.array(v, copy=True)


class SGD(Optimizer):
    """p -= lr * buf, buf = momentum * buf + (g + weight_decay * p) (torch.optim.SGD)."""

    def __init__(self, model, lr, momentum=0.0, weight_decay=0.0):
        super().__init__(model, lr)
        self.momentum = finite_number("momentum", momentum, 0)
        self.weight_decay = finite_number("weight_decay", weight_decay, 0)

    def step(self):
        self.steps += 1
        for name, p, g in self._params():
            d = g + self.weight_decay * p if self.weight_decay else g
            if self.momentum:
                buf = self.state.setdefault(name, {}).get("momentum")
                if buf is None:
                    buf = self.state[name]["momentum"] = np.array(d, copy=True)
                else:
                    buf *= self.momentum
                    buf += d
                d = buf
            p -= self.lr * d


class Adam(Optimizer):
    """torch.optim.Adam: bias-corrected first and second moments, L2 weight decay. A model
    on the cpu backend steps in one fused C pass per parameter (csrc/optim.inc)."""

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(model, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2 or \
                not all(finite_number("betas", b, 0) < 1 for b in betas):
            raise ValueError(f"betas: expected two numbers in [0, 1), got {betas!r}")
        self.b1, self.b2 = map(float, betas)
        self.eps = finite_number("eps", eps, 0)
        self.weight_decay = finite_number("weight_decay", weight_decay, 0)

    def step(self):
        self.steps += 1
        t = self.steps
        c1, c2 = 1 - self.b1 ** t, 1 - self.b2 ** t
        cpu = self._cpu_backend()
        for name, p, g in self._params():
            s = self.state.setdefault(name, {})
            if "m" not in s:
                s["m"], s["v"] = np.zeros_like(p), np.zeros_like(p)
            m, v = s["m"], s["v"]
            if cpu is not None and all(a.flags.c_contiguous and a.dtype == p.dtype for a in (p, g, m, v)):
                cpu.adam_step(p, g, m, v, step=self.lr / c1, b1=self.b1, b2=self.b2, c2=c2,
                              eps=self.eps, weight_decay=self.weight_decay)
                continue
            d = g + self.weight_decay * p if self.weight_decay else g
            m *= self.b1
            m += (1 - self.b1) * d
            v *= self.b2
            v += (1 - self.b2) * d * d
            p -= (self.lr / c1) * m / (np.sqrt(v / c2) + self.eps)


def clip_grad_norm(grads, max_norm):
    """Scale all gradients in place so their global L2 norm is at most max_norm (as
    torch.nn.utils.clip_grad_norm_). Returns the norm before clipping."""
    max_norm = finite_number("max_norm", max_norm, 0, low_ok=False)
    cpu = backends.get("cpu") if backends.why_unavailable("cpu") is None else None
    total = float(np.sqrt(sum(_sumsq(g, cpu) for g in grads.values())))
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for g in grads.values():
            g *= coef
    return total


def _sumsq(g, cpu):
    """Sum of squares of one gradient: the cpu backend's threaded kernel where it is built,
    else einsum's own loop, not BLAS (np.vdot): waking numpy's BLAS thread pool inside a
    training step makes it spin beside the fastrnn kernels' OpenMP threads."""
    if cpu is not None and g.dtype in (np.float32, np.float64) and g.flags.c_contiguous:
        return cpu.sumsq(g)
    return float(np.einsum("i,i->", g.ravel(), g.ravel()))
