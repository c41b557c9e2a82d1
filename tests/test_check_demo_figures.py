""".ci/check_demo_figures.py: CI fails when the README's demo figures are not what `make demo` measured."""
import json
import subprocess
import sys

from tiny_configs import REPO

SCRIPT = REPO / '.ci' / 'check_demo_figures.py'

# the README's wording, wrapped as a Markdown paragraph would be
README = """The demo network is tiny. Result on the demo validation set: **28.29 dB / 0.776** (Y, crop 4) and **26.52 dB /
0.751** (RGB, crop 4), against **27.07 / 0.712** and **25.30 / 0.688** for bicubic. See
[Limits](docs/limits.md).
"""
SEGSR = {'psnr_y': 28.2913, 'ssim_y': 0.77612, 'psnr_rgb': 26.5187, 'ssim_rgb': 0.75088}
BICUBIC = {'psnr_y': 27.0702, 'ssim_y': 0.71204, 'psnr_rgb': 25.2961, 'ssim_rgb': 0.68791}


def _files(tmp_path, segsr=None, bicubic=None, readme=README):
    segsr, bicubic = {**SEGSR, **(segsr or {})}, {**BICUBIC, **(bicubic or {})}
    run = tmp_path / 'results' / 'SeGSR_HAT_demo_x4_test'
    run.mkdir(parents=True)
    (run / 'results.json').write_text(json.dumps({'run': 'SeGSR_HAT_demo_x4_test', 'datasets': {
        'demo_val': {'metrics': segsr, 'images': 4}}}))
    cols = ['psnr_y', 'ssim_y', 'psnr_rgb', 'ssim_rgb']
    csv_lines = ['run,iter,self-ensemble,' + ','.join(f'demo_val {c}' for c in cols) + ',best_in',
                 'SeGSR_HAT_demo_x4_test,3000,no,' + ','.join(f'{segsr[c]:.4f}' for c in cols) + ',',
                 'bicubic,-,no,' + ','.join(f'{bicubic[c]:.4f}' for c in cols) + ',']
    (tmp_path / 'results' / 'demo_report.csv').write_text('\n'.join(csv_lines) + '\n')
    (tmp_path / 'README.md').write_text(readme)
    return ['--readme', str(tmp_path / 'README.md'), '--results', str(run),
            '--report-csv', str(tmp_path / 'results' / 'demo_report.csv')]


def _run(args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_passes_when_readme_matches_the_demo(tmp_path):
    proc = _run(_files(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert 'as measured' in proc.stdout


def test_rounding_within_tolerance_passes(tmp_path):
    # 28.2949 is stated as 28.29; SSIM 0.7764 as 0.776
    proc = _run(_files(tmp_path, segsr={'psnr_y': 28.2949, 'ssim_y': 0.7764}))
    assert proc.returncode == 0, proc.stderr


def test_fails_when_segsr_figure_moved(tmp_path):
    # the case: a fresh install gave 27.80 dB where the README says 28.29
    proc = _run(_files(tmp_path, segsr={'psnr_y': 27.80}))
    assert proc.returncode == 1
    assert 'SeG-SR psnr_y' in proc.stderr
    assert 'differs' in proc.stdout


def test_fails_on_ssim_beyond_tolerance(tmp_path):
    proc = _run(_files(tmp_path, segsr={'ssim_rgb': 0.7535}))
    assert proc.returncode == 1
    assert 'SeG-SR ssim_rgb' in proc.stderr


def test_fails_when_bicubic_moved(tmp_path):
    # bicubic moves with the demo data (e.g. an opencv or numpy change in the synthetic scenes)
    proc = _run(_files(tmp_path, bicubic={'psnr_rgb': 25.35}))
    assert proc.returncode == 1
    assert 'bicubic psnr_rgb' in proc.stderr


def test_reworded_readme_is_an_error_not_a_pass(tmp_path):
    proc = _run(_files(tmp_path, readme='The demo gives about 28 dB.\n'))
    assert proc.returncode == 2
    assert 'demo sentence' in proc.stderr


def test_missing_results_is_an_error(tmp_path):
    args = _files(tmp_path)
    (tmp_path / 'results' / 'SeGSR_HAT_demo_x4_test' / 'results.json').unlink()
    proc = _run(args)
    assert proc.returncode == 2
    assert 'results.json' in proc.stderr


def test_reads_the_repository_readme():
    """The shipped README still has the sentence the check parses (else CI could never check it)."""
    sys.path.insert(0, str(REPO / '.ci'))
    try:
        import check_demo_figures
    finally:
        sys.path.remove(str(REPO / '.ci'))
    stated = check_demo_figures.stated_figures((REPO / 'README.md').read_text(encoding='utf-8'))
    assert len(stated) == 8
    assert stated[('SeG-SR', 'psnr_y')] > stated[('bicubic', 'psnr_y')]
