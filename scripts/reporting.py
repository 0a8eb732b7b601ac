"""Results tail shared by the reproduction scripts: a Markdown table on stdout and the
per-run results as JSON.

Example:

>>> print_table(["T", "MSGD"], [[20, "2/2 (0.0%)"]])
| T | MSGD |
|---|---|
| 20 | 2/2 (0.0%) |
"""

import json


def print_table(header, rows):
    """Prints a Markdown table with the ``header`` cells and one line per row of cells."""
    print("| " + " | ".join(str(cell) for cell in header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


def write_json(results, path):
    """Writes ``results`` to ``path`` as indented JSON (numpy scalars as floats); ``path``
    ``None`` or empty writes nothing. Returns ``results``."""
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=2, default=float)
    return results
