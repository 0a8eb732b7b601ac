"""Results tail shared by the reproduction scripts: a Markdown table on stdout and the
per-run results as JSON; :func:`write_report` writes both as files and
:func:`plot_panels` draws line-plot panels to a PNG.

Example:

>>> print_table(["T", "MSGD"], [[20, "2/2 (0.0%)"]])
| T | MSGD |
|---|---|
| 20 | 2/2 (0.0%) |
"""

import json
import os


def markdown_table(header, rows):
    """The Markdown table (one string, lines joined by newlines) of ``header`` and ``rows``."""
    lines = ["| " + " | ".join(str(cell) for cell in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def print_table(header, rows):
    """Prints a Markdown table with the ``header`` cells and one line per row of cells."""
    print(markdown_table(header, rows))


def write_json(results, path):
    """Writes ``results`` to ``path`` as indented JSON (numpy scalars as floats); ``path``
    ``None`` or empty writes nothing. Returns ``results``."""
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=2, default=float)
    return results


def write_report(output_dir, results, header, rows, preamble=""):
    """Writes ``results.json`` and ``table.md`` (``preamble``, then the table) into
    ``output_dir`` (created if missing); ``output_dir`` ``None`` or empty writes nothing.
    Returns the paths written."""
    if not output_dir:
        return []
    os.makedirs(output_dir, exist_ok=True)
    json_path = os.path.join(output_dir, "results.json")
    table_path = os.path.join(output_dir, "table.md")
    write_json(results, json_path)
    with open(table_path, "w") as f:
        f.write((preamble.rstrip() + "\n\n" if preamble else "") + markdown_table(header, rows)
                + "\n")
    return [json_path, table_path]


def plot_panels(path, panels, title=None, width=6.0, height=4.2):
    """Draws line-plot panels side by side into the PNG ``path``.

    Args:
        path: output file.
        panels: list of dicts with ``series`` (list of ``(label, xs, ys, style)``, ``style``
            a dict of ``matplotlib`` ``plot`` keywords) and optional ``title``, ``xlabel``,
            ``ylabel``, ``xscale``, ``yscale``, ``ylim``, ``xticks`` (values labelled as
            plain numbers) and ``note`` (text in the corner).
        title: figure title.
        width, height: inches per panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    fig, axes = pyplot.subplots(1, len(panels), figsize=(width * len(panels), height),
                                squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for label, xs, ys, style in panel["series"]:
            ax.plot(xs, ys, label=label, **style)
        ax.set_title(panel.get("title", ""), fontsize=9)
        ax.set_xlabel(panel.get("xlabel", ""))
        ax.set_ylabel(panel.get("ylabel", ""))
        ax.set_xscale(panel.get("xscale", "linear"))
        ax.set_yscale(panel.get("yscale", "linear"))
        if "xticks" in panel:
            ax.set_xticks(panel["xticks"], [str(t) for t in panel["xticks"]])
            ax.minorticks_off()
        if "ylim" in panel:
            ax.set_ylim(*panel["ylim"])
        if panel.get("note"):
            ax.text(0.02, 0.02, panel["note"], transform=ax.transAxes, fontsize=7,
                    va="bottom", ha="left")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot.close(fig)
    return path
