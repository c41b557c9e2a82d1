"""Results researchers can compare: both metric conventions, results.json, a split manifest, report tables."""
import json
import math
import shutil

import cv2
import numpy as np
import pytest
import torch

import segsr_basicsr  # noqa: F401,I001
from basicsr.metrics import calculate_psnr, calculate_ssim
from segsr_basicsr.archs.tiny_configs import TINY_EDSR
from segsr_basicsr.io.checkpoint import network_metadata
from train_opts import write_opt


def _pair(seed=0, h=24, w=20, scale=4):
    rng = np.random.default_rng(seed)
    gt = cv2.GaussianBlur(rng.integers(0, 256, (h * scale, w * scale, 3), dtype=np.uint8), (5, 5), 0)
    sr = np.clip(gt.astype(int) + rng.integers(-20, 21, gt.shape), 0, 255).astype(np.uint8)
    return sr, gt


def test_both_conventions_against_a_hand_computation():
    """psnr_y: Y of BT.601 (BasicSR's bgr2ycbcr), crop = scale; psnr_rgb: MSE over R, G and B, crop = scale."""
    sr, gt = _pair()
    c = 4
    a, b = sr[c:-c, c:-c].astype(np.float64), gt[c:-c, c:-c].astype(np.float64)
    rgb_mse = np.mean((a - b) ** 2)
    assert calculate_psnr(sr, gt, c, test_y_channel=False) == pytest.approx(10 * math.log10(255 ** 2 / rgb_mse), 1e-9)

    def y(img):  # BGR 0..255 -> Y 16..235, as BT.601
        return 16 + (65.481 * img[..., 2] + 128.553 * img[..., 1] + 24.966 * img[..., 0]) / 255
    y_mse = np.mean((y(a) - y(b)) ** 2)
    assert calculate_psnr(sr, gt, c, test_y_channel=True) == pytest.approx(10 * math.log10(255 ** 2 / y_mse), 1e-6)
    # SSIM: RGB is the mean of the three channels' SSIM; Y is SSIM of the Y channel
    per_channel = [calculate_ssim(sr[..., k:k + 1], gt[..., k:k + 1], c) for k in range(3)]
    assert calculate_ssim(sr, gt, c, test_y_channel=False) == pytest.approx(np.mean(per_channel), 1e-9)
    ys = [np.round(y(img.astype(np.float64)))[..., None] for img in (sr, gt)]
    assert calculate_ssim(sr, gt, c, test_y_channel=True) == pytest.approx(calculate_ssim(*ys, c), abs=2e-3)


def _test_set(root, n=3, seed=0):
    (root / 'gt').mkdir(parents=True)
    (root / 'lq').mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        gt = cv2.GaussianBlur(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8), (5, 5), 0)
        cv2.imwrite(str(root / 'gt' / f'farm{i:02d}.png'), gt)
        cv2.imwrite(str(root / 'lq' / f'farm{i:02d}.png'), cv2.resize(gt, (10, 12), interpolation=cv2.INTER_AREA))
    return root


def _run_test(tmp_path, name, ckpt, data, monkeypatch):
    from segsr_basicsr.test import main
    metrics = {f'{m}_{conv}': {'type': f'calculate_{m}', 'crop_border': 4, 'test_y_channel': conv == 'y'}
               for m in ('psnr', 'ssim') for conv in ('y', 'rgb')}
    opt = {'name': name, 'model_type': 'SeGSRModel', 'scale': 4, 'num_gpu': 0, 'network_g': TINY_EDSR,
           'path': {'pretrain_network_g': str(ckpt), 'param_key_g': 'params'},
           'datasets': {'test_1': {'name': 'set', 'type': 'PairedImageDataset', 'dataroot_gt': str(data / 'gt'),
                                   'dataroot_lq': str(data / 'lq'), 'io_backend': {'type': 'disk'}}},
           'val': {'save_img': False, 'metrics': metrics}}
    monkeypatch.chdir(tmp_path)
    main(['-opt', write_opt(tmp_path / f'{name}.yml', opt)])
    return tmp_path / 'results' / name / 'results.json'


def _ckpt(path, seed):
    from basicsr.archs import build_network
    torch.manual_seed(seed)
    torch.save({'params': build_network(dict(TINY_EDSR)).state_dict(),
                **network_metadata({'network_g': TINY_EDSR, 'scale': 4})}, path)
    return path


def test_results_json_and_the_report_table(tmp_path, monkeypatch, capsys):
    data = _test_set(tmp_path / 'data')
    r1 = _run_test(tmp_path, 'runA', _ckpt(tmp_path / 'net_g_4.pth', 0), data, monkeypatch)
    r2 = _run_test(tmp_path, 'runB', _ckpt(tmp_path / 'net_g_8.pth', 1), data, monkeypatch)
    res = json.loads(r1.read_text())
    entry = res['datasets']['set']
    assert res['iter'] == 4 and res['scale'] == 4 and res['self_ensemble'] is False and res['checkpoint'].endswith('4.pth')
    assert set(entry['metrics']) == {'psnr_y', 'ssim_y', 'psnr_rgb', 'ssim_rgb'} and entry['images'] == 3
    assert entry['metrics']['psnr_y'] == pytest.approx(np.mean([v['psnr_y'] for v in entry['per_image'].values()]))
    assert entry['metrics']['psnr_y'] != pytest.approx(entry['metrics']['psnr_rgb'], abs=1e-3)
    assert len(entry['digest']) == 64 and entry['digest'] == json.loads(r2.read_text())['datasets']['set']['digest']

    from segsr_basicsr.report import main
    main([str(tmp_path / 'results'), '--out', str(tmp_path / 'table')])
    md = (tmp_path / 'table.md').read_text()
    rows = {line.split('|')[1].strip(): line for line in md.splitlines() if line.startswith('|')}
    assert 'runA' in rows and 'runB' in rows and 'bicubic' in rows
    assert f"{entry['metrics']['psnr_rgb']:.4f}" in rows['runA']
    # the bicubic row: BasicSR's MATLAB bicubic on the same LR images, same metric options
    from segsr_basicsr.data.prep import bicubic_up
    from segsr_basicsr.io.images import read_image
    bic = np.mean([calculate_psnr(bicubic_up(read_image(data / 'lq' / f), 4), read_image(data / 'gt' / f), 4,
                                  test_y_channel=True) for f in sorted(p.name for p in (data / 'gt').iterdir())])
    assert f'{bic:.4f}' in rows['bicubic']
    assert '**' in md and (tmp_path / 'table.csv').read_text().count('\n') == 4
    tex = (tmp_path / 'table.tex').read_text()
    assert r'\begin{tabular}' in tex and r'\textbf{' in tex and 'psnr\\_y' in tex

    # a run scored on other images is refused in the same table (unless asked)
    other = _test_set(tmp_path / 'other', seed=5)
    _run_test(tmp_path, 'runC', tmp_path / 'net_g_8.pth', other, monkeypatch)
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / 'results'), '--out', str(tmp_path / 'mixed')])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "dataset 'set' was scored on different images" in err and 'runC' in err
    assert not (tmp_path / 'mixed.md').exists()
    main([str(tmp_path / 'results'), '--out', str(tmp_path / 'mixed'), '--allow-mixed', '--no-bicubic'])
    assert 'runC' in (tmp_path / 'mixed.md').read_text()


def test_split_manifest_digest_is_stable_and_changes_with_one_image(tmp_path):
    from test_data_prep import call
    src = tmp_path / 'src'
    for cls in ('farm', 'lake'):
        (src / cls).mkdir(parents=True)
        for i in range(5):
            cv2.imwrite(str(src / cls / f'{cls}{i}.png'), np.full((16, 16, 3), 40 * i + (cls == 'lake'), np.uint8))
    digests = []
    for k in range(3):
        if k == 2:
            cv2.imwrite(str(src / 'lake' / 'lake3.png'), np.full((16, 16, 3), 200, np.uint8))
        r = call('split_dataset.py', '--src', src, '--out', tmp_path / f'out{k}', '--ratios', 3, 1, 1, check=False)
        assert r.returncode == 0, r.stderr
        manifest = json.loads((tmp_path / f'out{k}' / 'splits' / 'manifest.json').read_text())
        assert manifest['seed'] == 0 and manifest['ratios'] == [3.0, 1.0, 1.0]
        assert sum(len(v) for v in manifest['splits'].values()) == 10
        assert all(len(f['sha256']) == 64 for v in manifest['splits'].values() for f in v)
        digests.append(manifest['digest'])
        assert manifest['digest'] in r.stdout
    assert digests[0] == digests[1] != digests[2]


def test_training_warns_when_validation_is_the_test_split_or_shares_its_images(tmp_path, monkeypatch, capsys):
    from segsr_basicsr.utils.preflight import validation_is_test
    for split in ('val', 'test'):
        _test_set(tmp_path / 'ds' / split)
    msg = validation_is_test(str(tmp_path / 'ds' / 'test' / 'gt'), 'o.yml: datasets:val')
    assert 'is the test split' in msg
    msg = validation_is_test(str(tmp_path / 'ds' / 'val' / 'gt'), 'o.yml: datasets:val')
    assert 'shares 3 image(s) (same content) with the test split' in msg
    shutil.rmtree(tmp_path / 'ds' / 'test')
    _test_set(tmp_path / 'ds' / 'test', seed=9)
    assert validation_is_test(str(tmp_path / 'ds' / 'val' / 'gt'), 'o.yml: datasets:val') is None


def test_figure_and_curves_are_written_with_their_panels(tmp_path, monkeypatch):
    pytest.importorskip('matplotlib', reason="figures need the [report] extra (matplotlib)")
    from segsr_basicsr.report import main
    from segsr_basicsr.results.figures import _parse_log
    data = _test_set(tmp_path / 'data')
    net = dict(type='SeGSR_HAT', **__import__('tests.tiny_configs', fromlist=['TINY_HAT']).TINY_HAT,
               guidance=dict(__import__('tests.tiny_configs', fromlist=['TINY_GUIDANCE']).TINY_GUIDANCE))
    from basicsr.archs import build_network
    torch.save({'params': build_network(dict(net)).state_dict(), **network_metadata({'network_g': net, 'scale': 4})},
               tmp_path / 'net_g_2.pth')
    for name, ckpt in (('guided', tmp_path / 'net_g_2.pth'), ('edsr', _ckpt(tmp_path / 'net_g_3.pth', 0))):
        from segsr_basicsr.test import main as test_main
        opt = {'name': name, 'model_type': 'SeGSRModel', 'scale': 4, 'num_gpu': 0,
               'network_g': net if name == 'guided' else TINY_EDSR,
               'path': {'pretrain_network_g': str(ckpt), 'param_key_g': 'params'},
               'datasets': {'test_1': {'name': 'set', 'type': 'PairedImageDataset', 'dataroot_gt': str(data / 'gt'),
                                       'dataroot_lq': str(data / 'lq'), 'io_backend': {'type': 'disk'}}},
               'val': {'save_img': True, 'metrics': {'psnr_y': {'type': 'calculate_psnr', 'crop_border': 4,
                                                                'test_y_channel': True}}}}
        monkeypatch.chdir(tmp_path)
        test_main(['-opt', write_opt(tmp_path / f'{name}.yml', opt)])
    log = tmp_path / 'train_x.log'
    log.write_text('[epoch:  0, iter:       1, lr:(2.000e-04,)] [eta: 0:00:01] l_pix: 1.0000e-01\n'
                   '[epoch:  0, iter:       2, lr:(2.000e-04,)] [eta: 0:00:01] l_pix: 8.0000e-02\n'
                   'Validation set\n\t # psnr: 25.1000\tBest: 25.1000 @ 2 iter\n')
    assert _parse_log(log.read_text()) == ({'l_pix': [(1, 0.1), (2, 0.08)]}, {'psnr': [(2, 25.1)]})
    main([str(tmp_path / 'results'), '--out', str(tmp_path / 'rep'), '--figure', '--curves', str(log)])
    fig = cv2.imread(str(tmp_path / 'rep_figure.png'))
    curves = cv2.imread(str(tmp_path / 'rep_curves.png'))
    assert fig is not None and curves is not None
    # panels: bicubic, 2 runs, HR, 2 semantic maps (the guided tiny HAT has 2 SR units): 6 panels, ~2.2 in each
    assert fig.shape[1] == pytest.approx(6 * 2.2 * 150, abs=2) and curves.shape[1] == pytest.approx(9 * 120, abs=2)
    with pytest.raises(SystemExit):
        main([str(tmp_path / 'results'), '--out', str(tmp_path / 'rep2'), '--figure', 'nope'])
