"""Developer tool: build a stripped .ipynb from a percent-format script (``# %%`` cells).

    python scripts/py2nb.py draft.py notebooks/NN_name.ipynb

``# %% [markdown]`` starts a markdown cell (leading '# ' removed), ``# %% tags=["parameters"]`` a tagged
code cell. The committed notebooks are the source of truth; this only saves hand-writing JSON.
"""
import json
import re
import sys

import nbformat


def convert(src: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
                   "language_info": {"name": "python"}}
    cells, cur, kind, tags = [], [], None, []

    def flush():
        if kind is None:
            return
        text = "\n".join(cur).strip("\n")
        if kind == "md":
            text = "\n".join(re.sub(r"^# ?", "", ln) for ln in text.splitlines())
            cells.append(nbformat.v4.new_markdown_cell(text))
        else:
            c = nbformat.v4.new_code_cell(text)
            if tags:
                c.metadata["tags"] = tags
            cells.append(c)

    for line in src.splitlines():
        if line.startswith("# %%"):
            flush()
            cur = []
            kind = "md" if "[markdown]" in line else "code"
            m = re.search(r"tags=(\[.*\])", line)
            tags = json.loads(m.group(1)) if m else []
            continue
        cur.append(line)
    flush()
    for i, c in enumerate(cells):
        c["id"] = f"cell-{i:02d}"
    nb.cells = cells
    return nb


if __name__ == "__main__":
    src, dst = sys.argv[1], sys.argv[2]
    nbformat.write(convert(open(src).read()), dst)
