"""Edit notebook cell sources in place, keeping notebooks stripped (used while developing notebooks).

    from nbedit import replace, insert_after
    replace("notebooks/03_inflammation.ipynb", old_text, new_text)
"""
import json


def _load(path):
    return json.load(open(path))


def _save(path, nb):
    with open(path, "w") as fh:
        json.dump(nb, fh, indent=1, ensure_ascii=False)
        fh.write("\n")


def replace(path, old, new):
    nb = _load(path)
    cells = [c for c in nb["cells"] if old in "".join(c["source"])]
    if len(cells) != 1:
        raise SystemExit(f"{path}: expected one cell containing the text, found {len(cells)}")
    c = cells[0]
    c["source"] = "".join(c["source"]).replace(old, new).splitlines(keepends=True)
    _save(path, nb)
