"""Summarize tools/export_probe/results.jsonl: a compact table (architecture x setting: SGD-momentum / AdamW)
and the failures with their first error line. ok: trains exactly (1e-5, tests/against_torch.py);
ok*: a parameter found under another name (transposed) in the export; ok+: the Trainer's default
trainables differ from torch's requires_grad ones (the probe passed torch's); drift E: the
worst relative error of a loss, parameter or running statistic; ERR: see the list below.

    python -m probe.table [tools/export_probe/results.jsonl]
"""

from __future__ import annotations

import json
import sys

from tests.against_torch import RTOL


def cell(row):
    notes = row.get("notes", [])
    marks = ("*" if any(" is " in n for n in notes) else "") + ("+" if any("default" in n for n in notes) else "")
    if row["verdict"] == "exact":
        return "ok" + marks
    if row["verdict"] == "drift":  # the error relative to |ref64| + rms(ref64), as the tolerance (1e-5) is
        return f"drift {row['ratio'] * RTOL:.0e}" + marks
    return "ERR"


def main(path="tools/export_probe/results.jsonl"):
    rows = [json.loads(line) for line in open(path) if line.startswith("{")]
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    table = {}
    for r in rows:
        table.setdefault(r["case"], {}).setdefault(r["setting"], {})[r["optimizer"]] = r
    print("| case | " + " | ".join(settings) + " |")
    print("|---|" + "---|" * len(settings))
    for case, by_setting in table.items():
        cells = []
        for s in settings:
            pair = by_setting.get(s, {})
            a, b = (cell(pair[o]) if o in pair else "-" for o in ("sgd_momentum", "adamw"))
            cells.append(a if a == b else f"{a}/{b}")
        print(f"| {case} | " + " | ".join(cells) + " |")
    print()
    for r in rows:
        if r["verdict"] != "exact" and r["optimizer"] == "adamw":
            print(f"{r['case']} {r['setting']}: {r.get('error') or r.get('where')} {r.get('at', '')}")
        notes = [n for n in r.get("notes", []) if " is " not in n]
        if notes and r["optimizer"] == "adamw":
            print(f"  note {r['case']} {r['setting']}: {'; '.join(notes)[:200]}")


if __name__ == "__main__":
    main(*sys.argv[1:])
