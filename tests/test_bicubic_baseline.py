"""datasets_prep/bicubic_baseline.py: the bicubic floor printed next to a model's test log."""
import re
import subprocess
import sys

import cv2
import numpy as np

from segsr_basicsr.data import prep  # first: makes basicsr importable
from basicsr.metrics import calculate_psnr  # noqa: E402
from tiny_configs import REPO

SCRIPT = REPO / 'datasets_prep' / 'bicubic_baseline.py'


def _pairs(tmp_path, n=2, size=(40, 48)):
    rng = np.random.default_rng(0)
    (tmp_path / 'HR').mkdir()
    (tmp_path / 'LR').mkdir()
    for i in range(n):
        img = cv2.GaussianBlur(rng.integers(0, 256, size + (3,), dtype=np.uint8), (7, 7), 2)
        hr, lr = prep.hr_lr_pair(img, 4, 'x')
        cv2.imwrite(str(tmp_path / 'HR' / f'{i}.png'), hr)
        cv2.imwrite(str(tmp_path / 'LR' / f'{i}.png'), lr)


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_reports_mean_psnr_of_bicubic_upsampling(tmp_path):
    _pairs(tmp_path)
    res = _run('--hr', str(tmp_path / 'HR'), '--lr', str(tmp_path / 'LR'), '--scale', '4')
    assert res.returncode == 0, res.stderr
    psnr = float(re.search(r'PSNR ([\d.]+) dB', res.stdout).group(1))
    # independent oracle: OpenCV's bicubic is close to MATLAB's, not equal; a blurred image
    # upsampled either way lands within a fraction of a dB.
    ref = np.mean([calculate_psnr(cv2.resize(cv2.imread(str(tmp_path / 'LR' / f'{i}.png')), (48, 40),
                                             interpolation=cv2.INTER_CUBIC),
                                  cv2.imread(str(tmp_path / 'HR' / f'{i}.png')), 4, test_y_channel=True)
                   for i in range(2)])
    assert 20 < psnr < 60 and abs(psnr - ref) < 1.0


def test_wrong_scale_names_the_file(tmp_path):
    _pairs(tmp_path, n=1)
    res = _run('--hr', str(tmp_path / 'HR'), '--lr', str(tmp_path / 'LR'), '--scale', '3')
    assert res.returncode == 2
    assert '0.png' in res.stderr and 'check --scale' in res.stderr
