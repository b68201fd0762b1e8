"""Backend registry: every backend module exposes ``name``, ``forward_layer`` and
``backward_layer`` (the contract in DESIGN.md). Optional backends are imported lazily
so that a missing compiler or GPU only removes that backend, with a reason."""
import importlib
import warnings

_MODULES = {"reference": ".reference", "cpu": ".cpu", "cuda": ".cuda"}
_loaded = {}
_reasons = {}
_warned_fallback = False


def _load(name):
    if name in _loaded:
        return _loaded[name]
    if name in _reasons:
        return None
    try:
        mod = importlib.import_module(_MODULES[name], __name__)
        reason = mod.unavailable_reason() if hasattr(mod, "unavailable_reason") else None
    except Exception as exc:  # a missing extension or GPU must not break import fastrnn
        mod, reason = None, f"{type(exc).__name__}: {exc}"
    if reason:
        _reasons[name] = reason
        return None
    _loaded[name] = mod
    return mod


def names():
    """Every backend fastrnn knows, available or not."""
    return list(_MODULES)


def available():
    """Names of the backends that can run here, fastest last."""
    return [n for n in _MODULES if _load(n) is not None]


def why_unavailable(name):
    """None when ``name`` can run here, else the reason it cannot."""
    if name not in _MODULES:
        raise ValueError(f"backend: expected one of {names() + ['auto']}, got {name!r}")
    _load(name)
    return _reasons.get(name)


def get(name):
    """Return the backend module called ``name`` ('auto' picks one, see ``resolve``)."""
    name = resolve(name)
    mod = _load(name)
    if mod is None:
        raise RuntimeError(f"backend {name!r} is not available here: {_reasons[name]}")
    return mod


def why_no_bf16(mod):
    """None when backend module `mod` computes precision='bfloat16' here, else why not (a
    backend without bf16_unavailable_reason has no bfloat16 path at all)."""
    reason_of = getattr(mod, "bf16_unavailable_reason", None)
    return f"backend {mod.name!r} has no bfloat16 path" if reason_of is None else reason_of()


def zero_fill(arrays):
    """Set every numpy array in `arrays` to 0 in place (a model's zero_grad): with the cpu
    backend built, big ones in C (cpu.zero_fill), whatever backend the model runs on."""
    cpu = _load("cpu")
    if cpu is not None:
        cpu.zero_fill(arrays)
        return
    for a in arrays:
        a.fill(0)


def resolve(name, on_device=False):
    """Turn 'auto' into a concrete backend name: cuda for device arrays, cpu when built,
    else reference (warning once)."""
    global _warned_fallback
    if name != "auto":
        if name not in _MODULES:
            raise ValueError(f"backend: expected one of {names() + ['auto']}, got {name!r}")
        return name
    if on_device and _load("cuda") is not None:
        return "cuda"
    if _load("cpu") is not None:
        return "cpu"
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(f"fastrnn: the cpu backend is not available ({_reasons.get('cpu')}); "
                      "using the slow reference backend", RuntimeWarning, stacklevel=3)
    return "reference"
