#!/usr/bin/env python
"""Re-measure the tables the docs mark as checked, and fail when one no longer says what its command prints.

A table in README.md or docs/*.md is checked when an HTML comment (invisible on the rendered page) names
the command that produces it, and another closes it::

    <!-- checked (tolerance 0.02): $PY benchmarks/make_demo_net.py --out $TMP/net.pth && $PY -m ... -->
    | tile | overlap | ... |
    <!-- /checked -->

The command runs with bash in the repository, ``$PY`` the running Python, ``$TMP`` a fresh folder; the markdown
table rows (``| ... |``) it prints are compared with the block's rows, cell by cell: text must be equal,
numbers (``26``, ``0.2420``, ``17.01%``, ``inf``) may differ by the tolerance (0 when the comment gives none).
A block inside a fenced code block is an example of the syntax and is not run.
Exit 1 with the cells that differ; exit 2 when a command fails or prints no table. Run by ``.ci/run`` after
``make test``; ``--list`` names the checked tables without running them.
"""
import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r'<!-- checked(?: \(tolerance ([0-9.]+)\))?: (.*?) -->\n(.*?)<!-- /checked -->', re.S)
NUMBER = re.compile(r'^(-?\d+(?:\.\d+)?|inf)(%?)$')


def checked_blocks(paths):
    """(file, line, command, tolerance, table rows) of every checked block in ``paths``."""
    for path in paths:
        text = path.read_text(encoding='utf-8')
        for m in BLOCK.finditer(text):
            if in_fenced_code(text, m.start()):
                continue  # an example of the syntax, not a table
            line = text.count('\n', 0, m.start()) + 1
            yield path, line, m.group(2).strip(), float(m.group(1) or 0), table_rows(m.group(3))


def in_fenced_code(text, pos):
    """Whether ``pos`` lies inside a fenced code block (an odd number of ``` fences before it)."""
    return sum(line.lstrip().startswith('```') for line in text[:pos].splitlines()) % 2 == 1


def table_rows(text):
    """The cells of each markdown table row in ``text``, the header's separator row left out."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith('|') and line.endswith('|') and not set(line) <= set('|-: '):
            rows.append([cell.strip() for cell in line.strip('|').split('|')])
    return rows


def differences(stated, measured, tolerance):
    """'row k, column c: doc X, measured Y' for each cell that differs (and for a different row count)."""
    out = [] if len(stated) == len(measured) else [f'{len(stated)} rows in the doc, {len(measured)} measured']
    for k, (a, b) in enumerate(zip(stated, measured), 1):
        if len(a) != len(b):
            out.append(f'row {k}: {len(a)} cells in the doc, {len(b)} measured')
            continue
        for c, (x, y) in enumerate(zip(a, b), 1):
            mx, my = NUMBER.match(x), NUMBER.match(y)
            if mx and my and mx.group(2) == my.group(2):
                fx, fy = float(mx.group(1)), float(my.group(1))
                same = fx == fy or (math.isfinite(fx) and math.isfinite(fy) and abs(fx - fy) <= tolerance + 1e-9)
            else:
                same = x == y
            if not same:
                out.append(f'row {k}, column {c}: doc {x!r}, measured {y!r}')
    return out


def measure(command):
    """The table rows ``command`` prints (bash, in the repository, $PY and $TMP set)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PY=sys.executable, TMP=tmp)
        proc = subprocess.run(['bash', '-c', command], cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f'exit {proc.returncode}: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}')
    return table_rows(proc.stdout)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('files', nargs='*', type=Path, help='markdown files (default: README.md and docs/*.md)')
    p.add_argument('--list', action='store_true', help='name the checked tables, run nothing')
    args = p.parse_args(argv)
    files = args.files or [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]
    status, blocks = 0, list(checked_blocks(files))
    for path, line, command, tolerance, stated in blocks:
        where = f'{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{line}'
        if args.list:
            print(f'{where}: {command}')
            continue
        try:
            measured = measure(command)
        except RuntimeError as e:
            print(f'{where}: the command failed ({e}): {command}', file=sys.stderr)
            status = 2
            continue
        if not measured:
            print(f'{where}: the command printed no table: {command}', file=sys.stderr)
            status = 2
            continue
        bad = differences(stated, measured, tolerance)
        print(f'{where}: {"as measured" if not bad else "DIFFERS"} ({len(measured)} rows, tolerance {tolerance:g})')
        for line_ in bad:
            print(f'  {line_}')
        status = status or (1 if bad else 0)
    if not blocks:
        print('no checked tables found', file=sys.stderr)
        return 2
    return status


if __name__ == '__main__':
    sys.exit(main())
