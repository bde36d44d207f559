"""results.md (a markdown table) and slowdown.png (log-scale bars) from run.py's results."""

from __future__ import annotations


def _number(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"Machine: {m['processor']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} threads; "
             f"data: {results['data']['source']}, {results['data']['train']} training / {results['data']['test']} test "
             f"images; batch {results['settings']['batch_size']}.",
             "", f"Model: {results['model']}.", "",
             "| method | kind | samples/s | slowdown vs plain | accuracy | epochs | steps | privacy |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    notes = []
    for r in results["results"]:
        if r["status"] != "ok":
            privacy = r["privacy"] or "–"
            lines.append(f"| {r['method']} | {r['kind']} | {r['status']} | – | – | – | – | {privacy} |")
            notes.append(f"- `{r['method']}` {r['status']}: {r['note']}")
            continue
        slowdown = "1.00x" if r["slowdown_vs_plain"] == 1.0 else f"{_number(r['slowdown_vs_plain'])}x"
        accuracy = "–" if r["accuracy"] is None else f"{r['accuracy']:.1%}"
        epochs, steps = ("–" if r[key] is None else r[key] for key in ("epochs", "steps"))
        lines.append(f"| {r['method']} | {r['kind']} | {_number(r['samples_per_s'])} | {slowdown} | {accuracy} | "
                     f"{epochs} | {steps} | {r['privacy']} |")
        if r["note"]:
            notes.append(f"- `{r['method']}`: {r['note']}")
    lines += ["", "samples/s: the median over the timing rounds. Slowdown of the fast training methods: the median "
              "over rounds of plain's rate / the method's rate in the same round (so it need not equal the ratio of "
              "the medians); of CrypTen: against plain steps timed just before and after it; of inference: against "
              "`plain_infer_he_model`. Steps: timed steps (TenSEAL: images). Accuracy: on the test set after the "
              "epochs shown (TenSEAL: on the encrypted images only)."]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def plot(results: dict, path) -> str:
    """Writes the bar chart; returns what happened (a message when matplotlib is absent)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        return f"skipped: matplotlib is not importable ({error}); pip install matplotlib"
    rows = [r for r in results["results"] if r["status"] == "ok" and r["slowdown_vs_plain"]]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.4))
    colors = ["tab:blue" if r["kind"] == "train" else "tab:orange" for r in rows]
    labels = [f"{r['method']} ({r['kind']})" for r in rows]
    values = [r["slowdown_vs_plain"] for r in rows]
    ax.barh(labels, values, color=colors)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=0.8)
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:,.0f}x" if value >= 100 else f" {value:.3g}x", va="center", fontsize=8)
    ax.set_xlabel("slowdown vs plain PyTorch, log scale\n(training: vs plain training; inference: vs plain inference)")
    source, machine = results["data"]["source"], results["machine"]["processor"]
    ax.set_title(f"{source}, batch {results['settings']['batch_size']}, {machine}", fontsize=9)
    ax.set_xlim(right=max(values) * 20)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"wrote {path}"
