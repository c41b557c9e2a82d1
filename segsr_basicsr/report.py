"""Comparison tables from test runs: ``python -m segsr_basicsr.report RESULT... [--out report]``.

RESULT: results.json files that ``segsr_basicsr.test`` wrote, or folders holding them (searched
recursively). Writes ``<out>.md``, ``<out>.csv`` and ``<out>.tex``: a row per run (name, iteration,
self-ensemble), a column per dataset and metric (both conventions when the runs report both), the
bicubic baseline on the same images, the best value per column marked. Runs scored on different images
are refused in one table unless ``--allow-mixed``. ``--figure [IMAGE]`` adds ``<out>_<image>.png``, a
visual comparison (runs tested with ``val.save_img: true``); ``--curves LOG_OR_FOLDER...`` adds
``<out>_curves.png`` from BasicSR's training logs. Figures need matplotlib (``[report]`` extra).
"""
import argparse
from pathlib import Path

import segsr_basicsr  # noqa: F401,I001  (compat layer + registration, before basicsr)
from segsr_basicsr.errors import DataError
from segsr_basicsr.io.atomic import atomic_write
from segsr_basicsr.results.results_json import RESULTS_NAME, read_results
from segsr_basicsr.results.tables import build_table, check_same_images, render_csv, render_latex, render_markdown


def find_results(paths):
    """Every results file named by ``paths`` (files, or folders searched recursively), each once, in order."""
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            hits = sorted(p.rglob(RESULTS_NAME))
            if not hits:
                raise DataError(f'{p}: holds no {RESULTS_NAME}; run segsr_basicsr.test first (it writes '
                                f'results/<name>/{RESULTS_NAME}).')
            found += hits
        elif p.is_file():
            found.append(p)
        else:
            raise DataError(f'{p}: no such file or folder.')
    return list(dict.fromkeys(f.resolve() for f in found))


def main(argv=None):
    from segsr_basicsr.utils.cli import exit_on_user_error
    from segsr_basicsr.utils.preflight import check_writable
    p = argparse.ArgumentParser(prog='segsr-report', description=__doc__.split('\n\n')[0])
    p.add_argument('results', nargs='+', help='results.json files or folders of them')
    p.add_argument('--out', default='report', help='output path without extension (default: report)')
    p.add_argument('--no-bicubic', action='store_true', help='leave out the bicubic row')
    p.add_argument('--allow-mixed', action='store_true', help='tabulate runs scored on different images')
    p.add_argument('--figure', nargs='?', const='auto', metavar='IMAGE',
                   help='visual comparison of IMAGE (a test image stem; default: the most telling one)')
    p.add_argument('--crop', type=int, nargs=3, metavar=('X', 'Y', 'SIZE'), help='the zoomed crop (HR pixels)')
    p.add_argument('--curves', nargs='+', metavar='LOG', help='training logs or experiment folders to plot')
    args = p.parse_args(argv)
    with exit_on_user_error('segsr-report'):
        runs = [read_results(f) for f in find_results(args.results)]
        check_same_images(runs, args.allow_mixed)
        out = Path(args.out)
        check_writable(out.parent if str(out.parent) else '.', '--out folder')
        header, rows, best = build_table(runs, bicubic=not args.no_bicubic)
        for ext, render in (('.md', render_markdown), ('.csv', render_csv), ('.tex', render_latex)):
            text = render(header, rows, best)
            atomic_write(out.with_suffix(ext), lambda tmp, t=text: Path(tmp).write_text(t, encoding='utf-8'),
                         durable=False)
        print(render_markdown(header, rows, best), end='')
        print(f'wrote {out}.md, {out}.csv and {out}.tex ({len(runs)} run(s))')
        _figures(args, runs, out)


def _figures(args, runs, out):
    from segsr_basicsr.results.figures import comparison_figure, training_curves
    if args.figure:
        crop = (args.crop[1], args.crop[0], args.crop[2]) if args.crop else None
        path = comparison_figure(runs, f'{out}_figure.png', image=None if args.figure == 'auto' else args.figure,
                                 crop=crop)
        print(f'wrote {path}')
    if args.curves:
        logs = [f for p in map(Path, args.curves) for f in (sorted(p.glob('train_*.log')) if p.is_dir() else [p])]
        print(f'wrote {training_curves(logs, f"{out}_curves.png")}')


if __name__ == '__main__':
    main()
