"""Checks that the example's tables in the README are what the code on main prints now.

Each table stands under a marker line `<!-- example-table: ARGS -->` naming the example's arguments;
a check reruns `few_shot` with them and compares every column but the time column.

    python -m dropgrad_cuda.examples.readme README.md            # every marked table (the default run: ~4 min)
    python -m dropgrad_cuda.examples.readme README.md --short    # only those marked with --iterations
"""
import contextlib
import io
import re
import shlex
import sys
import tempfile

from . import few_shot

MARKER = re.compile(r"^<!-- example-table:(.*?)-->$", re.M)


def tables(readme_text):
    """[(args, [row, ...])] for each marked table; a row is its cells without the time column."""
    out = []
    for m in MARKER.finditer(readme_text):
        rows = []
        for line in readme_text[m.end():].lstrip("\n").splitlines():
            if not line.startswith("|"):
                break
            rows.append(_cells(line))
        out.append((shlex.split(m.group(1)), rows))
    return out


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")][:-1]


def fresh(args):
    """The rows the example prints for args now (its table, time column left out)."""
    with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(io.StringIO()) as out:
        few_shot.main([*args, "--no-progress", "--out", d])
    return [_cells(l) for l in out.getvalue().splitlines() if l.startswith("|")]


def mismatches(readme_text, short_only=False):
    """[(args, readme rows, fresh rows)] of the marked tables that differ from a fresh run."""
    bad = []
    for args, rows in tables(readme_text):
        if short_only and "--iterations" not in args:
            continue
        now = fresh(args)
        if now != rows:
            bad.append((args, rows, now))
    return bad


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as fh:
        bad = mismatches(fh.read(), short_only="--short" in argv)
    for args, rows, now in bad:
        print(f"README table for {' '.join(args)} differs from a fresh run:")
        print("\n".join("| " + " | ".join(r) + " |" for r in now))
    print("README example tables match a fresh run" if not bad else f"{len(bad)} table(s) differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
