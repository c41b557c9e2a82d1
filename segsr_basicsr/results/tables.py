"""Comparison tables from results files: a row per run, a column per dataset and metric, bicubic beside.

The bicubic row is computed here on the very image pairs the runs scored (their paths are in the
results files), with BasicSR's MATLAB bicubic and the same metric options, so it belongs in the same
table. Runs scored on different images (their digests differ) are refused unless asked.
"""
import csv
import io
from typing import Dict, List, Tuple

from segsr_basicsr.errors import DataError
from segsr_basicsr.metrics.registered import better
from segsr_basicsr.results.results_json import pairs_digest

__all__ = ['build_table', 'bicubic_scores', 'render_markdown', 'render_csv', 'render_latex', 'latex_escape']



def _columns(runs) -> List[Tuple[str, str]]:
    cols = []
    for run in runs:
        for ds, entry in run['datasets'].items():
            cols += [(ds, m) for m in entry['metrics'] if (ds, m) not in cols]
    return cols


def check_same_images(runs, allow_mixed=False):
    """Every dataset name must mean the same scored images (digest) in every run."""
    for ds in {d for run in runs for d in run['datasets']}:
        digests = {}
        for run in runs:
            if ds in run['datasets']:
                digests.setdefault(run['datasets'][ds]['digest'], []).append(run['run'])
        if len(digests) > 1 and not allow_mixed:
            groups = '; '.join(f'{", ".join(names)}: {d[:12]}' for d, names in digests.items())
            raise DataError(f'dataset {ds!r} was scored on different images in these runs ({groups}); their numbers '
                            'do not compare. Test them on the same images, or pass --allow-mixed to tabulate anyway.')


def bicubic_scores(entry, scale) -> Dict[str, float]:
    """Mean of each metric of ``entry`` for bicubic upsampling of its scored LR images."""
    from basicsr.metrics import calculate_metric

    from segsr_basicsr.data.prep import bicubic_up
    from segsr_basicsr.io.images import read_image
    pairs = entry.get('pairs') or []
    if not pairs or any(gt is None for _, gt in pairs):
        return {}
    if pairs_digest(pairs) != entry['digest']:
        raise DataError(f'the images of {entry.get("dataroot_lq")} changed since they were scored (digest differs); '
                        'rerun the test before making the table.')
    sums = {m: 0.0 for m in entry['metric_options']}
    for lq, gt in pairs:
        lr, hr = read_image(lq), read_image(gt)
        hr = hr[:lr.shape[0] * scale, :lr.shape[1] * scale]  # as BasicSR's paired dataset crops GT
        up = bicubic_up(lr, scale)
        for m, opt in entry['metric_options'].items():
            sums[m] += float(calculate_metric({'img': up, 'img2': hr, 'lq': lr}, dict(opt)))  # lq: LR-consistency
    return {m: v / len(pairs) for m, v in sums.items()}


def build_table(runs, bicubic=True):
    """(header, rows, best) with rows [label, iter, self-ensemble, values...]; ``best`` the column maxima
    (minima for metrics marked better: lower) over the runs."""
    cols = _columns(runs)
    rows = [[r['run'], r.get('iter'), 'yes' if r.get('self_ensemble') else 'no',
             *[r['datasets'].get(ds, {}).get('metrics', {}).get(m) for ds, m in cols]] for r in runs]
    if bicubic:
        scores = {}
        for run in runs:
            for ds, entry in run['datasets'].items():
                if ds not in scores:
                    scores[ds] = bicubic_scores(entry, int(run['scale']))
        rows.append(['bicubic', None, 'no', *[scores.get(ds, {}).get(m) for ds, m in cols]])
    best = []
    for j, (ds, m) in enumerate(cols):
        opts = next(r['datasets'][ds]['metric_options'][m] for r in runs if ds in r['datasets'])
        values = [row[3 + j] for row in rows[:len(runs)] if row[3 + j] is not None]
        lower = better(opts) == 'lower'
        best.append((min if lower else max)(values) if values else None)
    header = ['run', 'iter', 'self-ensemble', *[f'{ds} {m}' for ds, m in cols]]
    return header, rows, best


def _fmt(v):
    if v is None:
        return '-'
    return f'{v:.4f}' if isinstance(v, float) else str(v)


def render_markdown(header, rows, best):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * 3 + '---:|' * (len(header) - 3)]
    for row in rows:
        cells = [_fmt(v) for v in row[:3]] + [f'**{_fmt(v)}**' if v is not None and v == b else _fmt(v)
                                              for v, b in zip(row[3:], best)]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n\nBest value per column in bold (runs only).\n'


def render_csv(header, rows, best):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    writer.writerow(header + ['best_in'])
    for row in rows:
        marks = [h for h, v, b in zip(header[3:], row[3:], best) if v is not None and v == b]
        writer.writerow([_fmt(v) if v is not None else '' for v in row] + [';'.join(marks)])
    return buf.getvalue()


#: LaTeX's special characters in text mode and what prints each one as itself
LATEX_ESCAPES = {'\\': r'\textbackslash{}', '{': r'\{', '}': r'\}', '#': r'\#', '$': r'\$', '%': r'\%', '&': r'\&',
                 '_': r'\_', '^': r'\textasciicircum{}', '~': r'\textasciitilde{}'}


def latex_escape(text) -> str:
    """``text`` as LaTeX prints it literally: every special character escaped in one pass (so an escape's
    own backslash and braces are never escaped again)."""
    return ''.join(LATEX_ESCAPES.get(c, c) for c in str(text))


def render_latex(header, rows, best):
    esc = latex_escape
    out = [r'\begin{tabular}{l' + 'c' * (len(header) - 1) + '}', r'\hline',
           ' & '.join(esc(h) for h in header) + r' \\', r'\hline']
    for row in rows:
        cells = [esc(_fmt(v)) for v in row[:3]] + [r'\textbf{' + esc(_fmt(v)) + '}' if v is not None and v == b
                                                   else esc(_fmt(v)) for v, b in zip(row[3:], best)]
        out.append(' & '.join(cells) + r' \\')
    out += [r'\hline', r'\end{tabular}']
    return '\n'.join(out) + '\n'
