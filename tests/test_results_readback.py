"""The files segsr_basicsr.test and segsr-report write are read back whole, whatever the names in them.

Run, dataset, metric and image names hold every LaTeX special (``# $ ^ { } ~ & _ %``): a results.json reads
back identically, the report's .tex escapes each one (balanced braces, no bare special), the figure and
the curves are written; a truncated or other-schema results.json is refused in one line (exit 2).
"""
import json
import re

import cv2
import numpy as np
import pytest

import segsr_basicsr  # noqa: F401,I001

#: every LaTeX special character, in names a user may pick
ODD = r'a#b$c^{d}e~f&g_h%i'
METRIC = f'psnr_y {ODD}'


def _results(tmp_path, run, seed):
    """A results.json written by :func:`write_results` for run ``run``: one dataset, two images, SR saved."""
    from segsr_basicsr.results.results_json import write_results
    data = tmp_path / 'data'
    rng = np.random.default_rng(0)
    scored, sr_images, per_image = [], {}, []
    for i in range(2):
        stem = f'img{i} {ODD}'
        gt, lq, sr = data / 'gt' / f'{stem}.png', data / 'lq' / f'{stem}.png', tmp_path / run / f'{stem}.png'
        for p in (gt, lq, sr):
            p.parent.mkdir(parents=True, exist_ok=True)
        hr = cv2.GaussianBlur(rng.integers(0, 256, (32, 24, 3), dtype=np.uint8), (5, 5), 0)
        if not gt.exists():
            cv2.imwrite(str(gt), hr)
            cv2.imwrite(str(lq), cv2.resize(hr, (6, 8), interpolation=cv2.INTER_AREA))
        cv2.imwrite(str(sr), cv2.resize(cv2.imread(str(lq)), (24, 32), interpolation=cv2.INTER_CUBIC))
        scored.append((str(lq), str(gt)))
        sr_images[stem] = str(sr)
        per_image.append((stem, {METRIC: np.float32(20 + seed + i)}))  # numpy scalars, as metrics return them
    opt = {'name': run, 'scale': 4, 'network_g': {'type': 'SeGSR_EDSR'}, 'path': {},
           'val': {'metrics': {METRIC: {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True}}}}
    return write_results(opt, {'dataroot_gt': str(data / 'gt'), 'dataroot_lq': str(data / 'lq')}, f'set {ODD}',
                         per_image, scored, tmp_path / run, sr_images)


def _report(argv, capsys):
    from segsr_basicsr.report import main
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_a_results_json_the_package_wrote_reads_back_identically(tmp_path):
    from segsr_basicsr.results.results_json import read_results
    path = _results(tmp_path, f'run {ODD}', 0)
    data = read_results(path)
    entry = data['datasets'][f'set {ODD}']
    assert data['run'] == f'run {ODD}' and entry['per_image'][f'img1 {ODD}'] == {METRIC: 21.0}
    assert entry['metrics'] == {METRIC: 20.5} and entry['images'] == 2


def _balanced(tex):
    depth = 0
    for c in re.sub(r'\\[{}]', '', tex):
        depth += {'{': 1, '}': -1}.get(c, 0)
        assert depth >= 0, tex
    return depth == 0


def test_the_report_escapes_every_latex_special_in_names_and_draws_them(tmp_path, capsys):
    pytest.importorskip('matplotlib', reason="figures need the [report] extra (matplotlib)")
    a, b = _results(tmp_path, f'run {ODD}', 0), _results(tmp_path, f'base {ODD}', 1)
    log = tmp_path / f'curves {ODD}' / 'train_x.log'
    log.parent.mkdir()
    log.write_text('[epoch:  0, iter:       1, lr:(2.000e-04,)] [eta: 0:00:01] l_pix: 1.0000e-01\n'
                   '[epoch:  0, iter:       2, lr:(2.000e-04,)] [eta: 0:00:01] l_pix: 8.0000e-02\n'
                   '\t # psnr_y: 21.5000\tBest: 21.5000 @ 2 iter\n')
    out = tmp_path / f'report {ODD}'
    code, stdout, err = _report([a, b, '--out', out, '--figure', '--curves', log.parent], capsys)
    assert code == 0, err
    tex = (tmp_path / f'report {ODD}.tex').read_text()
    body = tex.split(r'\hline', 1)[1]
    assert _balanced(tex)
    # no special character is left bare: each is an escape or part of one
    bare = re.sub(r'\\textasciicircum\{\}|\\textasciitilde\{\}|\\textbackslash\{\}|\\textbf\{[^{}]*\}|\\[#$%&_{}]'
                  r'|\\\\|\\hline|\\end\{tabular\}| & ', '', body)  # ' & ': the column separator
    assert not set(bare) & set('#$%^&_{}~\\'), bare
    escaped = r'a\#b\$c\textasciicircum{}\{d\}e\textasciitilde{}f\&g\_h\%i'
    assert tex.count(escaped) == 2 + 2, tex  # the header cell '<dataset> <metric>' and the 2 run names
    assert (tmp_path / f'report {ODD}_figure.png').stat().st_size > 0
    assert (tmp_path / f'report {ODD}_curves.png').stat().st_size > 0


@pytest.mark.parametrize('damage,fragment', [
    (lambda text: text[:len(text) // 2], 'cannot be read as a results file'),
    (lambda text: json.dumps({'run': 'x', 'scale': 4, 'datasets': {'set': {'metrics': {'psnr': 'high'}}}}),
     'datasets:set has no'),
    (lambda text: text.replace('"metric_options"', '"metric_opts"'), 'has no metric_options'),
    (lambda text: json.dumps([1, 2]), 'is not a results file of segsr_basicsr.test'),
], ids=['truncated', 'no-digest', 'renamed-key', 'not-a-mapping'])
def test_a_truncated_or_other_schema_results_json_is_refused_in_one_line(damage, fragment, tmp_path, capsys):
    path = _results(tmp_path, 'run', 0)
    path.write_text(damage(path.read_text()))
    code, _, err = _report([path, '--out', tmp_path / 'report'], capsys)
    lines = [line for line in err.splitlines() if line.startswith('segsr-report: error: ')]
    assert code == 2 and len(lines) == 1 and fragment in lines[0] and 'Traceback' not in err, err
    assert not list(tmp_path.glob('report*'))
