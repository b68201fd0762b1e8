"""Benchmark output: terminal tables, JSON, CSV, PNG plots, and the comparison of two runs."""
import csv
import json
import math

SCHEMA = "fastrnn-bench/1"
CSV_FIELDS = ["cell", "mode", "hidden", "input_size", "batch", "seq_len", "backend", "repeats",
              "median_s", "min_s", "max_s", "spread", "tokens_per_s", "ms_per_step", "gflops",
              "peak_fraction", "speedup_vs_torch-cpu", "speedup_vs_reference"]


def _fmt(v, nd=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-2):
            return f"{v:.3g}"
        return f"{v:.{nd}f}"
    return str(v)


def render_table(headers, rows):
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def results_table(rows):
    headers = ["cell", "mode", "H", "B", "T", "backend", "tokens/s", "ms/step", "GFLOP/s",
               "%peak", "spread", "vs torch", "vs ref"]
    body = []
    for r in rows:
        pf = r.get("peak_fraction")
        body.append([r["cell"], r["mode"], str(r["hidden"]), str(r["batch"]), str(r["seq_len"]),
                     r["backend"], f"{r['tokens_per_s']:,.0f}", _fmt(r["ms_per_step"], 3),
                     _fmt(r["gflops"], 1), "-" if pf is None else f"{100 * pf:.0f}%",
                     f"{100 * r['spread']:.0f}%", _fmt(r.get("speedup_vs_torch-cpu")),
                     _fmt(r.get("speedup_vs_reference"))])
    return render_table(headers, body)


MEMORY_SCHEMA = "fastrnn-bench-memory/1"
MEMORY_CSV_FIELDS = ["cell", "mode", "hidden", "input_size", "batch", "seq_len", "backend",
                     "peak_bytes", "held_bytes", "memory_vs_torch-cpu"]


def memory_table(rows):
    """Peak and held memory (fastrnn.memory) a point, in MB, and the peak over torch's."""
    headers = ["cell", "mode", "H", "B", "T", "backend", "peak MB", "held MB", "vs torch"]
    body = [[r["cell"], r["mode"], str(r["hidden"]), str(r["batch"]), str(r["seq_len"]), r["backend"],
             f"{r['peak_bytes'] / 1e6:,.1f}", f"{r['held_bytes'] / 1e6:,.1f}", _fmt(r.get("memory_vs_torch-cpu"))]
            for r in rows]
    return render_table(headers, body)


def write_memory_json(path, machine, settings, rows):
    with open(path, "w") as f:
        json.dump(dict(schema=MEMORY_SCHEMA, machine=machine, settings=settings, results=rows), f, indent=1)


def write_json(path, machine, settings, peak_gflops, rows):
    with open(path, "w") as f:
        json.dump(dict(schema=SCHEMA, machine=machine, settings=settings,
                       matmul_peak_gflops=peak_gflops, results=rows), f, indent=1)


COMPARE_FIELDS = ["cell", "mode", "hidden", "batch", "seq_len", "backend", "a", "b", "ratio"]


def write_csv(path, rows, fields=CSV_FIELDS):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def load_run(path):
    """Read a JSON written by write_json; ValueError with the reason when it is not one."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("results"), list):
        raise ValueError(f"{path}: not a fastrnn bench result (expected schema {SCHEMA!r})")
    return data


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def _panels(rows):
    return sorted({(r["cell"], r["mode"]) for r in rows})


def plot_throughput(path, rows, title=""):
    """tokens/s against sequence length: a panel per (cell, mode), a line per backend and
    (batch, hidden). Returns False (and writes nothing) without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False
    panels = _panels(rows)
    ncol = 2
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6 * ncol, 3.6 * nrow), squeeze=False)
    backends = sorted({r["backend"] for r in rows})
    colors = {b: f"C{i}" for i, b in enumerate(backends)}
    styles = ["-", "--", ":", "-."]
    for ax, (cell, mode) in zip(axes.flat, panels):
        sel = [r for r in rows if r["cell"] == cell and r["mode"] == mode]
        shapes = sorted({(r["batch"], r["hidden"]) for r in sel})
        for b in backends:
            for k, (B, H) in enumerate(shapes):
                pts = sorted((r["seq_len"], r["tokens_per_s"]) for r in sel
                             if r["backend"] == b and r["batch"] == B and r["hidden"] == H)
                if pts:
                    ax.plot(*zip(*pts), styles[k % 4], marker="o", ms=3, color=colors[b],
                            label=f"{b} B={B} H={H}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{cell} {mode}")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel("tokens/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _key(r):
    return (r["cell"], r["mode"], r["hidden"], r["batch"], r["seq_len"], r["backend"])


def compare_rows(a, b):
    """Rows present in both runs, with b's tokens/s over a's."""
    bb = {_key(r): r for r in b["results"]}
    out = []
    for r in a["results"]:
        s = bb.get(_key(r))
        if s is not None:
            out.append(dict(cell=r["cell"], mode=r["mode"], hidden=r["hidden"], batch=r["batch"],
                            seq_len=r["seq_len"], backend=r["backend"], a=r["tokens_per_s"],
                            b=s["tokens_per_s"], ratio=s["tokens_per_s"] / r["tokens_per_s"]))
    return out


def compare_table(rows, name_a, name_b):
    headers = ["cell", "mode", "H", "B", "T", "backend", "A tokens/s", "B tokens/s", "B/A"]
    body = [[r["cell"], r["mode"], str(r["hidden"]), str(r["batch"]), str(r["seq_len"]), r["backend"],
             f"{r['a']:,.0f}", f"{r['b']:,.0f}", f"{r['ratio']:.2f}"] for r in rows]
    return f"A = {name_a}\nB = {name_b}\n" + render_table(headers, body)


def plot_compare(path, a, b, name_a, name_b):
    """Both runs on one figure: solid lines run A, dashed run B."""
    plt = _pyplot()
    if plt is None:
        return False
    rows = [dict(r, backend=f"{r['backend']} (A)") for r in a["results"]]
    rows += [dict(r, backend=f"{r['backend']} (B)") for r in b["results"]]
    return plot_throughput(path, rows, title=f"A: {name_a}   B: {name_b}")
