"""Training driver for the RNN language model: truncated BPTT with the hidden state carried
(and detached) between windows, validation after each epoch, learning-rate decay on
plateau, a CSV log, and checkpoints written atomically that resume exactly."""
import csv
import hashlib
import json
import os
import time
import zipfile

import numpy as np

from . import data as D
from . import backends
from .lm import RNNLM, bits_per_token, perplexity, unigram_baseline
from .optim import SGD, Adam, clip_grad_norm, finite_number
from .progress import Progress

FORMAT = "fastrnn-lm/1"
MODEL_KEYS = ("cell", "hidden", "layers", "emb", "proj", "dropout", "tie", "tokenizer", "vocab_size_max",
              "precision")
DATA_KEYS = ("data", "max_bytes", "val_fraction", "batch", "bptt")
DEFAULTS = dict(data=None, max_bytes=2_000_000, tokenizer="char", vocab_size_max=None, cell="lstm",
                hidden=256, layers=2, emb=None, proj=0, dropout=0.0, tie=False, batch=32, bptt=64,
                optimizer="adam", lr=3e-3, momentum=0.0, weight_decay=0.0, clip=1.0, epochs=10,
                time_limit=None, max_steps=None, val_fraction=0.05, seed=0, backend="auto",
                lr_decay=0.5, patience=0, eval_bptt=256, precision="float32")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, corrupt, or for another model/data."""


def atomic_write(path, write):
    """write(f) into a temporary file beside path, then rename: a reader sees the old file
    or the new one, never half of one, even if the process dies mid-write."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(path, model, opt, meta, hidden):
    arrays = {f"param/{n}": p for n, p in model.named_parameters()}
    osd = opt.state_dict()
    arrays.update({f"opt/{k}": v for k, v in osd["arrays"].items()})
    if hidden is not None:
        for i, h in enumerate(hidden if isinstance(hidden, tuple) else (hidden,)):
            arrays[f"hidden/{i}"] = h
    meta = dict(meta, format=FORMAT, opt_steps=osd["steps"], lr=osd["lr"],
                rng=model._rng.bit_generator.state, rnn_rng=model.rnn._rng.bit_generator.state)
    arrays["meta"] = np.array(json.dumps(meta))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path):
    """(meta dict, arrays dict); CheckpointError with the reason when unusable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable fastrnn checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fastrnn language-model checkpoint (format {meta.get('format')!r})")
    return meta, arrays


def build_model(cfg, vocab_size):
    # (checkpoints from before proj or precision have no such key: their defaults)
    return RNNLM(vocab_size, cfg["hidden"], cfg["layers"], cfg["cell"], emb_size=cfg["emb"],
                 dropout=cfg["dropout"], tie_weights=cfg["tie"], proj_size=cfg.get("proj", 0),
                 backend=cfg["backend"], seed=cfg["seed"], precision=cfg.get("precision", "float32"))


def build_optimizer(cfg, model):
    if cfg["optimizer"] == "sgd":
        return SGD(model, cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    if cfg["optimizer"] == "adam":
        return Adam(model, cfg["lr"], weight_decay=cfg["weight_decay"])
    raise ValueError(f"optimizer: expected 'sgd' or 'adam', got {cfg['optimizer']!r}")


def restore_model(meta, arrays, path, backend=None):
    """The model stored in a checkpoint, with its vocabulary (for generate and resume)."""
    cfg = dict(meta["config"])
    if backend:
        cfg["backend"] = backend
    vocab = D.Vocab.from_json(meta["vocab"])
    model = build_model(cfg, len(vocab))
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    try:
        model.load_state_dict(params)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: parameters do not fit the stored configuration ({exc})") from None
    return model, vocab, cfg


def train_step(model, opt, x, y, hidden, clip):
    """One truncated-BPTT step: loss of the window, backward, clipping, optimizer step.
    Returns the loss (nats/token) and the hidden state to carry into the next window."""
    model.zero_grad()
    loss, hidden = model.forward(x, y, hidden)
    model.backward()
    if clip:
        clip_grad_norm(model.grads, clip)
    opt.step()
    return loss, hidden


def _check_settings(c):
    """Numeric training settings the optimizer and model do not check themselves."""
    finite_number("clip", c["clip"], 0)   # 0: off
    if not (isinstance(c["patience"], int) and c["patience"] >= 0):
        raise ValueError(f"patience: expected an integer >= 0, got {c['patience']!r}")
    if not (isinstance(c["lr_decay"], (int, float)) and 0 < c["lr_decay"] <= 1):
        raise ValueError(f"lr_decay: expected a number in (0, 1], got {c['lr_decay']!r}")


def _check_precision(c):
    """bfloat16 training needs bfloat16 products on the stack's backend here."""
    if c.get("precision", "float32") == "bfloat16":
        why = backends.why_no_bf16(backends.get(backends.resolve(c["backend"])))
        if why:
            raise ValueError(f"precision='bfloat16': {why}")


def _fingerprint(ids):
    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int32).tobytes()).hexdigest()[:16]


class Trainer:
    """Trains from cfg (see DEFAULTS) into out_dir: checkpoint.npz, log.csv."""

    def __init__(self, cfg, out_dir, resume=False, progress=False, echo=print, overwrite=False):
        """A new run refuses an out_dir that holds a checkpoint (it would be replaced at the
        first save) unless overwrite=True, which also starts a fresh log.csv."""
        self.out_dir, self.progress, self.echo = out_dir, progress, echo
        if os.path.exists(out_dir) and not os.path.isdir(out_dir):
            raise ValueError(f"out: {out_dir!r} exists and is not a folder")
        self.ckpt = os.path.join(out_dir, "checkpoint.npz")
        self.log_path = os.path.join(out_dir, "log.csv")
        if not resume and os.path.exists(self.ckpt) and not overwrite:
            raise CheckpointError(f"{self.ckpt} exists: resume it (--resume), start over in its place "
                                  "(--overwrite), or choose another folder (--out)")
        fresh = None if resume else {k: cfg.get(k, v) for k, v in DEFAULTS.items()}
        if fresh is not None:   # before anything in out_dir is made or removed
            _check_settings(fresh)
            _check_precision(fresh)
        os.makedirs(out_dir, exist_ok=True)
        if not resume and overwrite and os.path.exists(self.log_path):
            os.remove(self.log_path)   # the rows of the run being replaced
        if resume:
            meta, arrays = load_checkpoint(self.ckpt)
            stored = meta["config"]
            had = lambda k: stored.get(k, DEFAULTS.get(k))   # keys added since keep their defaults
            clash = [f"{k}={cfg[k]!r} (checkpoint has {had(k)!r})" for k in MODEL_KEYS + DATA_KEYS
                     if cfg.get(k) is not None and cfg[k] != had(k) and k in cfg.get("_explicit", ())]
            if clash:
                raise CheckpointError(f"{self.ckpt}: the checkpoint was trained with other settings: " + "; ".join(clash))
            keep = {k: cfg[k] for k in ("epochs", "time_limit", "max_steps") if k in cfg.get("_explicit", ())}
            self.cfg = dict(stored, **keep)
            self.model, self.vocab, _ = restore_model(meta, arrays, self.ckpt, backend=cfg.get("backend"))
            self.cfg["backend"] = cfg.get("backend", self.cfg["backend"])
            _check_precision(self.cfg)   # a bfloat16 run resumed where there is none
        else:
            self.cfg = fresh
            meta, arrays = None, None
        c = self.cfg
        text = D.load_corpus(c["data"], c["max_bytes"])
        if not resume:
            self.vocab = D.Vocab.build(text, c["tokenizer"], max_size=c["vocab_size_max"])
        ids = self.vocab.encode(text)
        self.train_ids, self.val_ids = D.split(ids, c["val_fraction"])
        self.train_data = D.batchify(self.train_ids, c["batch"])
        self.val_data = D.batchify(self.val_ids, min(c["batch"], max(1, len(self.val_ids) // 4)))
        fp = _fingerprint(ids)
        if resume:
            if meta["data_fingerprint"] != fp:
                raise CheckpointError(f"{self.ckpt}: the training data differ from the checkpoint's "
                                      "(same --data and --max-bytes are needed to resume)")
            self.opt = build_optimizer(self.cfg, self.model)
            self.opt.load_state_dict(dict(arrays={k[4:]: v for k, v in arrays.items() if k.startswith("opt/")},
                                          steps=meta["opt_steps"], lr=meta["lr"]))
            self.model._rng.bit_generator.state = meta["rng"]
            self.model.rnn._rng.bit_generator.state = meta["rnn_rng"]
            hs = [arrays[f"hidden/{i}"] for i in range(2) if f"hidden/{i}" in arrays]
            self.hidden = None if not hs else (tuple(hs) if len(hs) == 2 else hs[0])
            self.state = {k: meta[k] for k in ("epoch", "window", "step", "tokens", "elapsed", "best_val",
                                               "bad_epochs", "history")}
        else:
            self.model = build_model(self.cfg, len(self.vocab))
            self.opt = build_optimizer(self.cfg, self.model)
            self.hidden = None
            self.state = dict(epoch=0, window=0, step=0, tokens=0, elapsed=0.0, best_val=None,
                              bad_epochs=0, history=[])
        self.fingerprint = fp

    def save(self):
        meta = dict(self.state, config={k: v for k, v in self.cfg.items() if k != "_explicit"},
                    vocab=self.vocab.to_json(), data_fingerprint=self.fingerprint)
        save_checkpoint(self.ckpt, self.model, self.opt, meta, self.hidden)

    def _log(self, row):
        new = not os.path.exists(self.log_path)
        with open(self.log_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)

    def validate(self):
        return self.model.evaluate(self.val_data, self.cfg["eval_bptt"])

    def run(self):
        c, s, m = self.cfg, self.state, self.model
        nwin = D.num_windows(self.train_data, c["bptt"])
        t_start = time.time() - s["elapsed"]
        bar = Progress(nwin, self.progress)
        stop = False
        epoch_loss, epoch_tokens = 0.0, 0
        try:
            while s["epoch"] < c["epochs"] and not stop:
                bar = Progress(nwin, self.progress)
                bar.update(s["window"])
                t_ep = time.time()
                tok_ep = 0
                for k, x, y in D.bptt_windows(self.train_data, c["bptt"], start=s["window"]):
                    loss, self.hidden = train_step(m, self.opt, x, y, self.hidden, c["clip"])
                    s["step"] += 1
                    s["tokens"] += y.size
                    tok_ep += y.size
                    s["window"] = k + 1
                    epoch_loss += loss * y.size
                    epoch_tokens += y.size
                    s["elapsed"] = time.time() - t_start
                    rate = tok_ep / max(time.time() - t_ep, 1e-9)
                    bar.update(k + 1, f"ep {s['epoch'] + 1} loss {loss:.3f} "
                                      f"({bits_per_token(loss):.2f} bits) lr {self.opt.lr:.2e} {rate:,.0f} tok/s")
                    if (c["time_limit"] and s["elapsed"] >= c["time_limit"]) or \
                            (c["max_steps"] and s["step"] >= c["max_steps"]):
                        stop = True
                        break
                bar.close()
                finished_epoch = s["window"] >= nwin
                val = self.validate()
                row = dict(epoch=s["epoch"] + 1, step=s["step"], tokens=s["tokens"],
                           elapsed_s=round(s["elapsed"], 2),
                           train_loss=round(epoch_loss / max(epoch_tokens, 1), 5), val_loss=round(val, 5),
                           val_bits=round(bits_per_token(val), 5), val_ppl=round(perplexity(val), 4),
                           lr=self.opt.lr, tokens_per_s=round(tok_ep / max(time.time() - t_ep, 1e-9), 1),
                           epoch_complete=finished_epoch)
                self._log(row)
                s["history"].append(row)
                self.echo(f"epoch {row['epoch']}{'' if finished_epoch else ' (partial)'}: train {row['train_loss']:.4f} "
                          f"val {val:.4f} nats = {row['val_bits']:.4f} bits/token, ppl {row['val_ppl']:.2f}, "
                          f"lr {self.opt.lr:.2e}, {row['tokens_per_s']:,.0f} tok/s")
                if finished_epoch:
                    if s["best_val"] is None or val < s["best_val"]:
                        s["best_val"], s["bad_epochs"] = val, 0
                    else:
                        s["bad_epochs"] += 1
                        if s["bad_epochs"] > c["patience"]:
                            self.opt.lr *= c["lr_decay"]
                            s["bad_epochs"] = 0
                    s["epoch"] += 1
                    s["window"] = 0
                    self.hidden = None  # each epoch starts from a zero state
                    epoch_loss, epoch_tokens = 0.0, 0
                self.save()
        except KeyboardInterrupt:
            bar.close()
            self.save()
            self.echo(f"interrupted: saved {self.ckpt} (resume with --resume)")
            raise
        return self.summary()

    def summary(self):
        val = self.state["history"][-1]["val_loss"] if self.state["history"] else self.validate()
        base = unigram_baseline(self.train_ids, self.val_ids, len(self.vocab))
        return dict(val_loss=val, val_bits=bits_per_token(val), unigram_bits=bits_per_token(base),
                    steps=self.state["step"], tokens=self.state["tokens"], elapsed_s=self.state["elapsed"],
                    vocab_size=len(self.vocab), checkpoint=self.ckpt)


def step_rates(trainer, names, steps):
    """Training tokens/s of each backend in `names` on trainer's model, data and settings:
    the median over `steps` optimizer steps of tokens / step time. Each backend trains its
    own copy of the model (the original is untouched). The backends take turns in short
    runs of steps, so a machine whose speed drifts (shared hosts do, by up to 2x over
    minutes) slows them alike. Each run starts after a pause and an unmeasured step: NumPy's
    BLAS threads spin for ~0.1 s after the reference's products, and the OpenMP kernels
    beside them ran 2x slower; a run after a pause starts with idle thread pools."""
    runs = {}
    for b in names:
        cfg = dict(trainer.cfg, backend=b)
        model = build_model(cfg, len(trainer.vocab))
        model.load_state_dict(trainer.model.state_dict())
        runs[b] = dict(clip=cfg["clip"], model=model, opt=build_optimizer(cfg, model), hidden=None,
                       rates=[], windows=_endless_windows(trainer.train_data, trainer.cfg["bptt"]))
    per_turn = max(2, -(-steps // 3))
    while any(len(r["rates"]) < steps for r in runs.values()):
        for r in runs.values():
            if len(runs) > 1:
                time.sleep(0.3)
            for i in range(1 + min(per_turn, steps - len(r["rates"]))):
                x, y = next(r["windows"])
                t0 = time.perf_counter()
                _, r["hidden"] = train_step(r["model"], r["opt"], x, y, r["hidden"], r["clip"])
                if i > 0:
                    r["rates"].append(y.size / (time.perf_counter() - t0))
    return {b: float(np.median(r["rates"])) if r["rates"] else float("nan") for b, r in runs.items()}


def _endless_windows(data, bptt):
    while True:
        for _, x, y in D.bptt_windows(data, bptt):
            yield x, y
