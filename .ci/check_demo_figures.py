#!/usr/bin/env python
"""Check the README's demo figures against what `make demo` just wrote (run by .ci/run after `make demo`).

The README sentence it reads (whitespace and line breaks free)::

    Result on the demo validation set: **28.26 dB / 0.779** (Y, crop 4) and **26.51 dB / 0.756** (RGB, crop 4),
    against **27.07 / 0.712** and **25.30 / 0.688** for bicubic

SeG-SR's figures come from the test run's ``results.json`` (``datasets.<name>.metrics``: psnr_y, ssim_y,
psnr_rgb, ssim_rgb); bicubic's from the bicubic row of the ``segsr-report`` table ``results/demo_report.csv``
(the same images, both conventions). Fails (exit 1) when a figure differs from the README's by more than
0.01 dB (PSNR) or 0.001 (SSIM), and says which; exit 2 when the README sentence or a result is missing.
"""
import argparse
import csv
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOL = {'psnr': 0.01, 'ssim': 0.001}
NUM = r'(\d+(?:\.\d+)?)'
SENTENCE = re.compile(
    r'Result on the demo validation set: \*\*' + NUM + r' dB / ' + NUM + r'\*\* \(Y, crop 4\) and \*\*' + NUM
    + r' dB / ' + NUM + r'\*\* \(RGB, crop 4\), against \*\*' + NUM + r' / ' + NUM + r'\*\* and \*\*' + NUM
    + r' / ' + NUM + r'\*\* for bicubic')
#: (label, metric key) in the order of the sentence's numbers
FIGURES = [('SeG-SR', 'psnr_y'), ('SeG-SR', 'ssim_y'), ('SeG-SR', 'psnr_rgb'), ('SeG-SR', 'ssim_rgb'),
           ('bicubic', 'psnr_y'), ('bicubic', 'ssim_y'), ('bicubic', 'psnr_rgb'), ('bicubic', 'ssim_rgb')]


class Missing(Exception):
    pass


def stated_figures(readme_text):
    """{(label, metric): value} of the README's demo sentence."""
    m = SENTENCE.search(' '.join(readme_text.split()))
    if not m:
        raise Missing('README: the demo sentence "Result on the demo validation set: **.. dB / ..** (Y, crop 4) '
                      'and **.. dB / ..** (RGB, crop 4), against **.. / ..** and **.. / ..** for bicubic" is '
                      'not there (reworded?); keep its wording or update this check.')
    return {key: float(v) for key, v in zip(FIGURES, m.groups())}


def measured_figures(results_json, report_csv, dataset='demo_val'):
    """{(label, metric): value} from the demo's results.json (SeG-SR) and report CSV (bicubic row)."""
    data = json.loads(Path(results_json).read_text(encoding='utf-8'))
    try:
        metrics = data['datasets'][dataset]['metrics']
    except (KeyError, TypeError):
        raise Missing(f'{results_json}: no metrics for dataset {dataset!r}') from None
    with open(report_csv, newline='', encoding='utf-8') as f:
        rows = {row['run']: row for row in csv.DictReader(f)}
    if 'bicubic' not in rows:
        raise Missing(f'{report_csv}: no bicubic row')
    out = {}
    for label, metric in FIGURES:
        value = metrics.get(metric) if label == 'SeG-SR' else rows['bicubic'].get(f'{dataset} {metric}')
        if value in (None, '', '-'):
            raise Missing(f'{results_json if label == "SeG-SR" else report_csv}: no {metric} for {label}')
        out[(label, metric)] = float(value)
    return out


def compare(stated, measured):
    """Lines of a stated-vs-measured table, and the figures off by more than the tolerance."""
    lines, bad = [f'{"":8} {"metric":9} {"README":>8} {"measured":>9}'], []
    for key in FIGURES:
        label, metric = key
        diff = abs(measured[key] - stated[key])
        off = diff > TOL[metric.split('_')[0]] + 1e-9
        lines.append(f'{label:8} {metric:9} {stated[key]:8.3f} {measured[key]:9.4f}' + ('  <-- differs' if off else ''))
        if off:
            bad.append(key)
    return lines, bad


def find_results(root):
    path = Path(root) / 'results.json'
    if path.is_file():
        return path
    found = sorted(Path(root).rglob('results.json'))
    if not found:
        raise Missing(f'{root}: no results.json (did `make demo` run?)')
    return found[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--readme', default=str(REPO / 'README.md'))
    p.add_argument('--results', default=str(REPO / 'results' / 'SeGSR_HAT_demo_x4_test'),
                   help='results.json of the demo test run, or its folder')
    p.add_argument('--report-csv', default=str(REPO / 'results' / 'demo_report.csv'))
    p.add_argument('--dataset', default='demo_val')
    args = p.parse_args(argv)
    try:
        stated = stated_figures(Path(args.readme).read_text(encoding='utf-8'))
        results = Path(args.results)
        results = results if results.is_file() else find_results(results)
        measured = measured_figures(results, args.report_csv, args.dataset)
    except (Missing, OSError) as e:
        print(f'check_demo_figures: {e}', file=sys.stderr)
        return 2
    lines, bad = compare(stated, measured)
    print('\n'.join(lines))
    if bad:
        print(f'\nThe README\'s demo figures are not what `make demo` gives here: {", ".join(" ".join(k) for k in bad)} '
              f'differ by more than {TOL["psnr"]} dB / {TOL["ssim"]} SSIM. If a code or dependency change moved them '
              'on purpose, say why in the commit and put the measured figures into the README sentence.',
              file=sys.stderr)
        return 1
    print('README demo figures: as measured.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
