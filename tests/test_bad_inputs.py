"""Table of bad inputs through the public entry points: each one fails with a message naming what is wrong.

Rows call ``segsr_basicsr.train.main`` / ``segsr_basicsr.test.main`` in-process (the same code as the console
scripts) with the current directory in tmp_path: a refused input exits with status 2 and one ``error:`` line.
"""
import copy
import os
from pathlib import Path

import pytest
import torch

import segsr_basicsr  # noqa: F401  (compat layer before basicsr)

from train_opts import TINY_MSRRESNET, train_opt, write_opt, write_pairs


def _evil_pickle(path, marker):
    class Payload:
        def __reduce__(self):
            return (os.system, (f'touch {marker}', ))
    torch.save({'params': Payload()}, path)


def _bad_checkpoints(tmp):
    """Checkpoint files the rows point at."""
    good = {'params': {k: v for k, v in _tiny_state().items()}}
    torch.save(good, tmp / 'good.pth')
    data = (tmp / 'good.pth').read_bytes()
    (tmp / 'truncated.pth').write_bytes(data[:len(data) // 3])
    torch.save({'weights': good['params']}, tmp / 'other_key.pth')
    wrong = {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in good['params'].items()}
    torch.save({'params': wrong}, tmp / 'other_arch.pth')
    _evil_pickle(tmp / 'evil.pth', tmp / 'PWNED')
    (tmp / 'text.pth').write_text('not a checkpoint\n')
    from segsr_basicsr.io.checkpoint import save_safetensors
    save_safetensors(good['params'], None, tmp / 'good.safetensors')
    data = (tmp / 'good.safetensors').read_bytes()
    (tmp / 'truncated.safetensors').write_bytes(data[:len(data) // 2])
    (tmp / 'text.safetensors').write_text('not a checkpoint\n')
    save_safetensors(wrong, None, tmp / 'other_arch.safetensors')
    save_safetensors(dict(list(good['params'].items())[1:]), None, tmp / 'missing_key.safetensors')
    torch.save({'iter': 7, 'epoch': 0, 'optimizers': [], 'schedulers': []}, tmp / '7.state')


def _tiny_state():
    from basicsr.archs.srresnet_arch import MSRResNet
    cfg = {k: v for k, v in TINY_MSRRESNET.items() if k != 'type'}
    return MSRResNet(**cfg).state_dict()


def _set(opt, dotted, value):
    *parents, leaf = dotted.split(':')
    node = opt
    for key in parents:
        node = node[key]
    if value is _DEL:
        del node[leaf]
    else:
        node[leaf] = value


_DEL = object()

# (id, entry, option edits {key path: value | _DEL} or raw text, extra argv, fragments expected in the message)
ROWS = [
    ('missing option file', 'train', 'MISSING', [], ['Option file not found', 'nope.yml']),
    ('option path is a folder', 'train', 'FOLDER', [], ['Option file not found', 'it is a folder']),
    ('yaml syntax error', 'train', 'TEXT:name: [unclosed\n', [], ['is not valid YAML', 'bad.yml', 'line 2']),
    ('yaml is a list', 'train', 'TEXT:- a\n- b\n', [], ['bad.yml', 'must be a YAML mapping', 'list']),
    ('python object tag', 'train', 'TEXT:name: !!python/object/apply:os.getcwd []\n', [],
     ['Refusing option file', 'bad.yml', 'python/object/apply', 'never executed']),
    ('typo in a section name', 'train', {'network_g': _DEL, 'netwrok_g': TINY_MSRRESNET}, [],
     ["missing key 'network_g'", "did you mean 'netwrok_g'"]),
    ('unknown arch', 'train', {'network_g:type': 'SeGSR_HATT'}, [],
     ["network_g:type 'SeGSR_HATT' is not a registered BasicSR arch", 'SeGSR_HAT']),
    ('unknown model_type', 'train', {'model_type': 'SegSRModel'}, [], ["'SegSRModel' is not a registered BasicSR model",
                                                                     'SeGSRModel']),
    ('unknown dataset type', 'train', {'datasets:train:type': 'PairedImageDatset'}, [],
     ["datasets:train:type 'PairedImageDatset'", 'PairedImageDataset']),
    ('missing dataset folder', 'train', {'datasets:train:dataroot_gt': 'datasets/UCMerced/HR'}, [],
     ['datasets:train:dataroot_gt', 'datasets/UCMerced/HR', 'does not exist', 'datasets_prep']),
    ('num_gpu on a CPU-only machine', 'train', {'num_gpu': 1}, [], ['num_gpu is 1', 'CUDA is not available',
                                                                   'num_gpu: auto']),
    ('num_gpu not a number', 'train', {'num_gpu': 'two'}, [], ["'num_gpu' must be 'auto' or an integer", "'two'"]),
    ('zero total_iter', 'train', {'train:total_iter': 0}, [], ["'train:total_iter' must be >= 1, got 0"]),
    ('missing save_checkpoint_freq', 'train', {'logger:save_checkpoint_freq': _DEL}, [],
     ["missing key 'logger:save_checkpoint_freq'"]),
    ('batch size is text', 'train', {'datasets:train:batch_size_per_gpu': 'four'}, [],
     ["'datasets:train:batch_size_per_gpu' must be a whole number, got 'four'"]),
    ('unknown dataset phase', 'train', {'datasets:training': {'name': 'x', 'type': 'PairedImageDataset'}}, [],
     ["dataset phase 'training' is not recognised"]),
    ('missing pretrained weights', 'train', {'path:pretrain_network_g': 'experiments/old/net_g_9.pth'}, [],
     ['path:pretrain_network_g', 'experiments/old/net_g_9.pth', 'is not a file']),
    ('force_yml without =', 'train', {}, ['--force_yml', 'train:total_iter:5'],
     ['--force_yml entry', 'train:total_iter:5', 'has no "="']),
    ('force_yml unknown section', 'train', {}, ['--force_yml', 'trian:total_iter=5'],
     ["key 'trian' does not exist", "did you mean 'train'"]),
    ('force_yml code as key', 'train', {}, ['--force_yml', 'name"]=__import__("os")#=1'],
     ['is not an option key', 'name"]']),
    ('force_yml broken list', 'train', {}, ['--force_yml', 'train:scheduler:milestones=[1, 2'],
     ['--force_yml list value', '[1, 2']),
    ('truncated checkpoint', 'train', {'path:pretrain_network_g': 'CKPT/truncated.pth'}, [],
     ['Cannot read checkpoint', 'truncated.pth', 'truncated']),
    ('text file as checkpoint', 'train', {'path:pretrain_network_g': 'CKPT/text.pth'}, [],
     ['Cannot read checkpoint', 'text.pth', 'not a PyTorch checkpoint']),
    ('checkpoint with pickled code', 'train', {'path:pretrain_network_g': 'CKPT/evil.pth'}, [],
     ['Refusing to load', 'evil.pth', 'pickled Python objects']),
    ('checkpoint without the param key', 'train', {'path:pretrain_network_g': 'CKPT/other_key.pth'}, [],
     ['other_key.pth', "has no 'params' entry", 'weights', 'param_key_g']),
    ('checkpoint of another network', 'train', {'path:pretrain_network_g': 'CKPT/other_arch.pth'}, [],
     ['other_arch.pth', 'do not fit network_g MSRResNet x4', 'size mismatch', 'does not record its network_g',
      'option file it was trained with']),
    ('truncated safetensors', 'train', {'path:pretrain_network_g': 'CKPT/truncated.safetensors'}, [],
     ['Cannot read safetensors file', 'truncated.safetensors', 'truncated or not a safetensors file']),
    ('text file as safetensors', 'train', {'path:pretrain_network_g': 'CKPT/text.safetensors'}, [],
     ['Cannot read safetensors file', 'text.safetensors', 'segsr-export --safetensors']),
    ('safetensors of another network', 'train', {'path:pretrain_network_g': 'CKPT/other_arch.safetensors'}, [],
     ['other_arch.safetensors', 'do not fit network_g MSRResNet', 'size mismatch']),
    ('safetensors missing a key', 'train', {'path:pretrain_network_g': 'CKPT/missing_key.safetensors'}, [],
     ['missing_key.safetensors', 'do not fit network_g MSRResNet', '1 missing key(s)', 'conv_first.weight']),
    ('missing resume state', 'train', {'path:resume_state': 'experiments/bad/training_states/40.state'}, [],
     ['path:resume_state', '40.state', 'does not exist', '--auto_resume']),
    ('resume state without its network file', 'train', {'path:resume_state': 'CKPT/7.state'}, [],
     ['Cannot resume from', '7.state', 'net_g_7.pth is missing']),
    ('network file given as resume state', 'train', {'path:resume_state': 'CKPT/good.pth'}, [],
     ['good.pth', 'is not a basicsr training state', "'iter'"]),
    ('test options without val', 'test', {'val': _DEL}, [], ['Testing needs a "val:" section']),
    ('test on a missing folder', 'test', {'datasets:test_1:dataroot_lq': 'nowhere/LR'}, [],
     ['datasets:test_1:dataroot_lq', "'nowhere/LR' does not exist"]),
]


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('bad_inputs')
    write_pairs(root / 'data', n=2)
    (root / 'ckpt').mkdir()
    _bad_checkpoints(root / 'ckpt')
    opt = train_opt(root / 'data', name='bad', total_iter=2, network=dict(TINY_MSRRESNET))
    test = dict(name='bad_test', model_type='SRModel', scale=4, num_gpu='auto',
                datasets=dict(test_1=dict(opt['datasets']['train'], name='t', phase='test')),
                network_g=dict(TINY_MSRRESNET), path=dict(pretrain_network_g=str(root / 'ckpt' / 'good.pth')),
                val=dict(save_img=False, suffix=None, metrics={}))
    for key in ('gt_size', 'use_hflip', 'use_rot', 'batch_size_per_gpu', 'num_worker_per_gpu'):
        test['datasets']['test_1'].pop(key)
    return root, opt, test


@pytest.mark.parametrize('row', ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_is_refused_with_a_clear_message(row, setup, tmp_path, monkeypatch, capsys):
    name, entry, edits, extra, fragments = row
    root, train, test = setup
    monkeypatch.chdir(tmp_path)
    opt = copy.deepcopy(train if entry == 'train' else test)
    path = tmp_path / 'bad.yml'
    if edits == 'MISSING':
        path = tmp_path / 'nope.yml'
    elif edits == 'FOLDER':
        path = tmp_path / 'folder.yml'
        path.mkdir()
    elif isinstance(edits, str):
        path.write_text(edits[len('TEXT:'):])
    else:
        for key, value in edits.items():
            if isinstance(value, str) and value.startswith('CKPT/'):
                value = str(root / 'ckpt' / value[len('CKPT/'):])
            _set(opt, key, value)
        write_opt(path, opt)
    if entry == 'train':
        from segsr_basicsr.train import main
    else:
        from segsr_basicsr.test import main
    with pytest.raises(SystemExit) as exc:
        main(['-opt', str(path), *extra])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    prefix = f'segsr-{entry}: error: '
    assert prefix in err, err
    message = err[err.index(prefix):].strip()
    print(message)
    assert '\n' not in message  # one line, fit for a log
    for fragment in fragments:
        assert fragment in message, f'{fragment!r} not in {message!r}'
    assert not (root / 'ckpt' / 'PWNED').exists()
    assert not Path(tmp_path / 'experiments' / 'bad' / 'models' / 'net_g_latest.pth').exists()


def test_table_covers_at_least_fifteen_distinct_inputs():
    assert len({r[0] for r in ROWS}) == len(ROWS) >= 15


def test_the_shipped_option_files_pass_the_checks(tmp_path, monkeypatch):
    """The checks must not refuse what BasicSR accepts (e.g. ``save_checkpoint_freq: !!float 5e3``), on the
    machine each file is for: the train files ship ``num_gpu: 1`` (one GPU; more GPUs means torchrun)."""
    from segsr_basicsr.io.option_file import load_option_file, unknown_top_level_keys
    from segsr_basicsr.options import validate_options
    import torch
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    (tmp_path / 'folder').mkdir()
    (tmp_path / 'file.pth').write_bytes(b'')
    files = sorted((Path(__file__).resolve().parents[1] / 'options').rglob('*.yml'))
    assert files
    for f in files:
        opt = load_option_file(f)
        assert not unknown_top_level_keys(opt), f  # no warning on what we ship
        for dataset in opt['datasets'].values():
            for key in [k for k in dataset if k.startswith('dataroot') or k == 'meta_info_file']:
                dataset[key] = str(tmp_path / ('file.pth' if key == 'meta_info_file' else 'folder'))
        for key in [k for k in opt['path'] if k.startswith('pretrain_network') and opt['path'][k]]:
            opt['path'][key] = str(tmp_path / 'file.pth')
        validate_options(opt, f, is_train=f.name.startswith('train'))


# ============================================================================= the validation pass (issue 16)
# Every row: exit code 2, one line ``<prog>: error: ...`` naming the culprit, no traceback, nothing under a
# final output name. Train/test rows point path:pretrain_network_g at a truncated checkpoint: a network
# built (and its weights read) before the check would fail with "Cannot read checkpoint" instead, so the
# expected preflight message proves the error came before the network.
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from tiny_configs import TINY_HAT  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PREP = REPO / 'datasets_prep'


@pytest.fixture(autouse=True)
def _fresh_basicsr_logger():
    """In-process runs: BasicSR's root logger keeps a handler on the stderr of the test that created it
    (captured, closed afterwards); let each run set up its own, as a new process would."""
    yield
    import logging

    from basicsr.utils import logger as basicsr_logger
    logging.getLogger('basicsr').handlers.clear()
    basicsr_logger.initialized_logger.pop('basicsr', None)


def _img(path, h, w, seed=0):
    rng = np.random.default_rng(seed)
    assert cv2.imwrite(str(path), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return path


def _garbage(path):
    Path(path).write_bytes(b'this is not an image at all' * 4)


def _loop(path):
    os.symlink(Path(path).name, path)  # a link to itself: stat() fails with ELOOP


def _run_opt(tmp_path, entry, opt, extra=()):
    path = write_opt(tmp_path / 'bad.yml', opt)
    main = __import__(f'segsr_basicsr.{entry}', fromlist=['main']).main
    with pytest.raises(SystemExit) as exc:
        main(['-opt', path, *extra])
    return exc.value.code


def _pairs(root, n=2, gt=32, scale=4):
    write_pairs(root, n=n, gt_size=gt, scale=scale)
    return root / 'gt', root / 'lq'


def _train_opt(tmp_path, probe):
    opt = train_opt(tmp_path / 'data', name='bad', total_iter=2, network=dict(TINY_MSRRESNET))
    opt['path']['pretrain_network_g'] = str(probe)
    return opt


def _test_opt(tmp_path, probe, network=None):
    data = tmp_path / 'data'
    return dict(name='bad_test', model_type='SeGSRModel', scale=4, num_gpu='auto',
                datasets=dict(test_1=dict(name='t', type='PairedImageDataset', dataroot_gt=str(data / 'gt'),
                                          dataroot_lq=str(data / 'lq'), io_backend=dict(type='disk'))),
                network_g=dict(network or TINY_MSRRESNET), path=dict(pretrain_network_g=str(probe)),
                val=dict(save_img=True, suffix=None,
                         metrics=dict(psnr=dict(type='calculate_psnr', crop_border=4, test_y_channel=True))))


def _hat():
    return dict(type='SeGSR_HAT', **TINY_HAT)  # window_size 4


def _lq(d):
    return d / 'data' / 'lq'


def _gt(d):
    return d / 'data' / 'gt'


# (id, entry, opt edits {key path: value | _DEL}, data edit (tmp_path) -> None, fragments)
PREFLIGHT_ROWS = [
    ('scale differs from network upscale', 'train', {'scale': 2}, None,
     ['scale is 2 but network_g:upscale is 4', 'Set both']),
    ('gt_size not a multiple of scale', 'train', {'datasets:train:gt_size': 18}, None,
     ['datasets:train:gt_size 18 is not a multiple of scale 4', 'Use 16']),
    ('training patch larger than the LQ', 'train', {'datasets:train:gt_size': 64}, None,
     ['lq/000.png', 'smaller than the training patch 16x16', 'gt_size 64']),
    ('GT and LQ counts differ', 'train', {}, lambda d: os.remove(_lq(d) / '001.png'),
     ['dataroot_gt has 2 images and dataroot_lq 1', 'lq/001.png is missing', 'pair by name']),
    ('GT and LQ names differ', 'train', {}, lambda d: os.rename(_lq(d) / '001.png', _lq(d) / '001_x4.png'),
     ['lq/001.png is missing', 'gt/001.png']),
    ('LR larger than its GT', 'train', {}, lambda d: _img(_lq(d) / '000.png', 64, 64),
     ['lq/000.png', 'LQ 64x64 x4 = 256x256 does not match its GT 32x32', 'make_bicubic']),
    ('undecodable GT image', 'train', {}, lambda d: _garbage(_gt(d) / '001.png'),
     ['gt/001.png', 'cannot be decoded']),
    ('symlink loop in a dataset folder', 'train', {}, lambda d: _loop(_gt(d) / 'zz.png'),
     ['gt/zz.png', 'Too many levels of symbolic links', 'fix or remove']),
    ('non-image file in a paired folder', 'train', {}, lambda d: (_gt(d) / 'README.txt').write_text('x'),
     ['gt', 'README.txt is not an image', 'move it out']),
    ('empty dataset folder', 'train', {}, lambda d: [os.remove(p) for p in _gt(d).iterdir()],
     ['datasets:train:dataroot_gt', 'no images in it']),
    ('experiments is a file', 'train', {}, lambda d: (d / 'experiments').write_text('x'),
     ['output folder', 'experiments', 'is a file, not a folder']),
    ('LMDB with the disk backend', 'train', {'datasets:train:dataroot_gt': 'LMDB'}, None,
     ['points at an LMDB with io_backend disk', 'type: lmdb']),
    ('paired dataset without scale', 'train', {'scale': _DEL}, None,
     ["datasets:train is a PairedImageDataset but the option file has no 'scale'"]),
    ('dataset max_value not positive', 'train', {'datasets:train:max_value': -1}, None,
     ['datasets:train:max_value must be a number > 0', 'got -1']),
    ('filename_tmpl without a slot', 'train', {'datasets:train:filename_tmpl': '{0}_{1}'}, None,
     ["datasets:train:filename_tmpl '{0}_{1}' must hold one {}"]),
    ('HAT tile in a wrong form', 'train', {'tile': {'tile_size': 64, 'pad': 8}, 'val': {'val_freq': 1}}, None,
     ["top-level tile must look like HAT's", 'tile_pad']),
    ('test: LQ count differs', 'test', {}, lambda d: os.remove(_lq(d) / '000.png'),
     ['dataroot_gt has 2 images and dataroot_lq 1', 'lq/000.png is missing']),
    ('test: GT smaller than LQ x scale', 'test', {}, lambda d: _img(_gt(d) / '001.png', 20, 32),
     ['lq/001.png', 'does not match its GT 32x20', 'GT must be LQ x scale']),
    ('test: images too small for the metric crop', 'test',
     {'val:metrics:psnr:crop_border': 16}, None,
     ['gt/000.png', 'too small for val:metrics:psnr (crop_border 16)', 'needs at least 33x33']),
    ('test: images too small for SSIM', 'test',
     {'val:metrics:ssim': {'type': 'calculate_ssim', 'crop_border': 11, 'test_y_channel': True}}, None,
     ['too small for val:metrics:ssim (crop_border 11)', 'needs at least 33x33']),
    ('test: negative crop_border', 'test', {'val:metrics:psnr:crop_border': -1}, None,
     ['val:metrics:psnr:crop_border must be an integer >= 0, got -1']),
    ('test: results is a file', 'test', {}, lambda d: (d / 'results').write_text('x'),
     ['output folder', 'results', 'is a file, not a folder']),
    ('test: tile not a multiple of the window', 'test', {'network_g': 'HAT', 'val:tile': {'size': 6, 'overlap': 2}},
     None, ['val:tile size 6 is not a multiple of network_g:window_size 4', 'Use 8']),
    ('test: tile overlap leaves no step', 'test', {'network_g': 'HAT', 'val:tile': {'size': 8, 'overlap': 6}}, None,
     ['val:tile overlap 6 leaves no step on a tile of 8 with window 4', 'overlap <= size - window (4)']),
    ('test: HAT tile alias against the window', 'test',
     {'network_g': 'HAT', 'tile': {'tile_size': 5, 'tile_pad': 1}}, None,
     ["tile (tile_size 5 + 2 * tile_pad 1, HAT's form of val:tile) size 7 is not a multiple"]),
    ('test: HAT tile and val.tile both set', 'test',
     {'tile': {'tile_size': 8, 'tile_pad': 2}, 'val:tile': {'size': 8, 'overlap': 2}}, None,
     ['both tile (HAT form) and val:tile are set']),
    ('test: tile margin too large', 'test', {'network_g': 'HAT', 'val:tile': {'size': 16, 'overlap': 4, 'margin': 3}},
     None, ['val:tile margin must be an integer between 0 and overlap/2, got 3']),
    ('test: undecodable LQ image', 'test', {}, lambda d: _garbage(_lq(d) / '000.png'),
     ['lq/000.png', 'cannot be decoded']),
    ('test: symlink loop among test images', 'test', {}, lambda d: _loop(_lq(d) / '002.png'),
     ['lq/002.png', 'Too many levels of symbolic links']),
]


@pytest.mark.parametrize('row', PREFLIGHT_ROWS, ids=[r[0] for r in PREFLIGHT_ROWS])
def test_preflight_refuses_before_any_work(row, setup, tmp_path, monkeypatch, capsys):
    name, entry, edits, data_edit, fragments = row
    root = setup[0]
    monkeypatch.chdir(tmp_path)
    _pairs(tmp_path / 'data')
    probe = root / 'ckpt' / 'truncated.pth'  # reading it fails: the error must come first
    opt = _train_opt(tmp_path, probe) if entry == 'train' else _test_opt(tmp_path, probe)
    for key, value in edits.items():
        if value == 'HAT':
            value = _hat()
        elif value == 'LMDB':
            (tmp_path / 'x.lmdb').mkdir()
            value = str(tmp_path / 'x.lmdb')
        _set(opt, key, value)
    if data_edit:
        data_edit(tmp_path)
    code = _run_opt(tmp_path, entry, opt)
    err = capsys.readouterr().err
    assert code == 2, err
    assert 'Traceback' not in err and 'Cannot read checkpoint' not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f'segsr-{entry}: error: ')]
    assert len(lines) == 1, err
    print(lines[0])
    for fragment in fragments:
        assert fragment in lines[0], f'{fragment!r} not in {lines[0]!r}'
    assert not (tmp_path / 'experiments' / opt['name']).exists()
    assert not (tmp_path / 'results' / opt['name']).exists()
    assert not (tmp_path / 'tb_logger').exists()


# ----------------------------------------------------------------------------- datasets_prep scripts
def _call(script, *args):
    """Run a datasets_prep script as __main__ in this process (no ~3 s subprocess start)."""
    from test_data_prep import call
    r = call(script, *args, check=False)
    return r.returncode, r.stdout, r.stderr


def _hr_folder(d, n=3, h=32, w=32):
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        _img(d / f'img{i}.png', h, w, seed=i)
    return d


def _bad(folder, name):
    """``folder`` with an undecodable ``name`` added (sorted after the good images)."""
    _garbage(folder / name)
    return folder


def _add(folder, name):
    """``folder`` with one more good image ``name``."""
    _img(folder / name, 32, 32)
    return folder


def _looped(folder):
    folder.mkdir()
    _loop(folder / 'a.png')
    return folder


def _classes(d):
    for cls in ('farm', 'lake'):
        _hr_folder(d / cls, n=2)
    return d


# (id, script, setup(tmp) -> argv, fragments, outputs that must not exist afterwards)
PREP_ROWS = [
    ('make_bicubic: two inputs, one output folder', 'make_bicubic.py',
     lambda d: ['--input', _hr_folder(d / 'P' / 'HR1'), _hr_folder(d / 'P' / 'HR2'), '--scales', 4],
     ['two outputs of this run would be written to the same path', 'HR_x4', 'its own output'],
     ['P/HR_x4', 'P/LR_x4']),
    ('make_bicubic: undecodable image in the second input', 'make_bicubic.py',
     lambda d: ['--input', _hr_folder(d / 'A' / 'HR'), _bad(_hr_folder(d / 'B' / 'HR'), 'img9.png'), '--scales', 2],
     ['B/HR/img9.png', 'cannot be decoded'], ['A/HR_x2', 'A/LR_x2', 'B/HR_x2']),
    ('make_bicubic: image smaller than the scale', 'make_bicubic.py',
     lambda d: ['--input', _hr_folder(d / 'HR', n=1, h=3, w=40), '--scales', 2, 4],
     ['HR/img0.png', '40x3 is smaller than 8, the least that gives 2 LR pixels a side at scale 4'],
     ['HR_x2', 'LR_x2']),
    ('make_bicubic: negative --max-value', 'make_bicubic.py',
     lambda d: ['--input', _hr_folder(d / 'HR'), '--max-value', -1], ['--max-value must be > 0', '-1'], ['HR_x4']),
    ('make_bicubic: output under a file', 'make_bicubic.py',
     lambda d: ['--input', _hr_folder(d / 'HR'), '--out', d / 'HR' / 'img0.png' / 'sub'],
     ['img0.png is a file, not a folder'], []),
    ('make_bicubic: only entry is a symlink loop', 'make_bicubic.py',
     lambda d: ['--input', _looped(d / 'HR')],
     ['HR: no images'], ['HR_x4']),
    ('extract_subimages: image smaller than the crop', 'extract_subimages.py',
     lambda d: ['--input', _hr_folder(d / 'big', n=2, h=64, w=40), '--out', d / 'subs', '--crop-size', 48,
                '--step', 24], ['big/img0.png', '40x64 is smaller than --crop-size 48'], ['subs']),
    ('extract_subimages: negative --thresh-size', 'extract_subimages.py',
     lambda d: ['--input', _hr_folder(d / 'big'), '--out', d / 'subs', '--thresh-size', -1],
     ['--thresh-size must be >= 0, got -1'], ['subs']),
    ('extract_subimages: zero step', 'extract_subimages.py',
     lambda d: ['--input', _hr_folder(d / 'big'), '--out', d / 'subs', '--step', 0],
     ['--crop-size and --step must be positive'], ['subs']),
    ('extract_subimages: undecodable image after good ones', 'extract_subimages.py',
     lambda d: ['--input', _bad(_hr_folder(d / 'big', h=64, w=64), 'zz.png'), '--out', d / 'subs', '--crop-size', 32],
     ['big/zz.png', 'cannot be decoded'], ['subs']),
    ('make_lmdb: PNG level out of range', 'make_lmdb.py',
     lambda d: [_hr_folder(d / 'HR'), '--compress-level', 12], ['--compress-level must be 0..9', 'got 12'],
     ['HR.lmdb']),
    ('make_lmdb: undecodable image in the second folder', 'make_lmdb.py',
     lambda d: [_hr_folder(d / 'A'), _bad(_hr_folder(d / 'B'), 'img7.png'), '--unpaired'],
     ['B/img7.png', 'cannot be decoded'], ['A.lmdb', 'B.lmdb']),
    ('make_lmdb: two folders, one LMDB path', 'make_lmdb.py',
     lambda d: [_hr_folder(d / 'A'), _hr_folder(d / 'B'), '--lmdb', d / 'x.lmdb'],
     ['--lmdb takes one folder'], ['x.lmdb']),
    ('split_dataset: undecodable image', 'split_dataset.py',
     lambda d: ['--src', _bad(_classes(d / 'src'), 'lake/lake9.png'), '--out', d / 'out'],
     ['lake/lake9.png', 'cannot be decoded'], ['out']),
    ('split_dataset: two files, one output name', 'split_dataset.py',
     lambda d: ['--src', _add(_classes(d / 'src'), 'farm/farm_img0.png'), '--out', d / 'out', '--ratios', 1, 0, 0],
     ['map to the same output name', 'farm_img0'], ['out']),
    ('split_dataset: output under a file', 'split_dataset.py',
     lambda d: ['--src', _classes(d / 'src'), '--out', d / 'src' / 'farm' / 'img0.png' / 'out'],
     ['img0.png is a file, not a folder'], []),
    ('split_dataset: negative ratio', 'split_dataset.py',
     lambda d: ['--src', _classes(d / 'src'), '--out', d / 'out', '--ratios', -1, 1, 1],
     ['--ratios needs 3 non-negative numbers'], ['out']),
    ('make_demo_dataset: no training tiles', 'make_demo_dataset.py',
     lambda d: ['--out', d / 'demo', '--num-train', 0], ['--num-train must be >= 1, got 0'], ['demo']),
    ('make_demo_dataset: tile not a multiple of 4', 'make_demo_dataset.py',
     lambda d: ['--out', d / 'demo', '--tile', 30], ['--tile must be a multiple of 4', '30'], ['demo']),
    ('make_demo_dataset: output under a file', 'make_demo_dataset.py',
     lambda d: ['--out', _add(d, 'f.png') / 'f.png' / 'demo'], ['f.png is a file, not a folder'], []),
    ('bicubic_baseline: LR without its HR', 'bicubic_baseline.py',
     lambda d: ['--hr', _hr_folder(d / 'hr', n=2), '--lr', _hr_folder(d / 'lr', n=3, h=8, w=8), '--scale', 4],
     ['lr/img2.png', 'has no HR image of the same name', '2 HR, 3 LR'], []),
    ('bicubic_baseline: HR without its LR', 'bicubic_baseline.py',
     lambda d: ['--hr', _hr_folder(d / 'hr', n=3), '--lr', _hr_folder(d / 'lr', n=2, h=8, w=8), '--scale', 4],
     ['lr/img2.png: missing'], []),
    ('bicubic_baseline: wrong scale', 'bicubic_baseline.py',
     lambda d: ['--hr', _hr_folder(d / 'hr', n=2), '--lr', _hr_folder(d / 'lr', n=2, h=8, w=8), '--scale', 2],
     ['lr/img0.png', '8x8 x2 does not give the HR size 32x32', 'check --scale'], []),
    ('bicubic_baseline: images too small for SSIM', 'bicubic_baseline.py',
     lambda d: ['--hr', _hr_folder(d / 'hr', n=1, h=16, w=16), '--lr', _hr_folder(d / 'lr', n=1, h=4, w=4),
                '--scale', 4], ['hr/img0.png', 'too small for SSIM with crop_border 4', '19x19'], []),
    ('bicubic_baseline: undecodable HR', 'bicubic_baseline.py',
     lambda d: ['--hr', _bad(_hr_folder(d / 'hr', n=2), 'img1.png'), '--lr', _hr_folder(d / 'lr', n=2, h=8, w=8),
                '--scale', 4], ['hr/img1.png', 'cannot be decoded'], []),
]


@pytest.mark.parametrize('row', PREP_ROWS, ids=[r[0] for r in PREP_ROWS])
def test_prep_script_refuses_before_any_work(row, tmp_path, monkeypatch):
    name, script, make_args, fragments, finals = row
    monkeypatch.chdir(tmp_path)
    args = make_args(tmp_path)
    assert args, 'row setup failed'
    before = {p for p in tmp_path.rglob('*')}
    code, out, err = _call(script, *args)
    assert code == 2, (out, err)
    assert 'Traceback' not in err
    lines = [line for line in err.splitlines() if line.startswith(f'{script}: error: ')]
    assert len(lines) == 1, err
    print(lines[0])
    for fragment in fragments:
        assert fragment in lines[0], f'{fragment!r} not in {lines[0]!r}'
    for final in finals:
        assert not (tmp_path / final).exists(), final
    assert {p for p in tmp_path.rglob('*')} == before  # nothing created, not even a temporary


def test_at_least_thirty_new_rows_cover_every_entry_point():
    rows = PREFLIGHT_ROWS + PREP_ROWS
    assert len({r[0] for r in rows}) == len(rows) >= 30
    scripts = {p.name for p in PREP.glob('*.py')}
    assert scripts <= {r[1] for r in PREP_ROWS}
    assert {'train', 'test'} <= {r[1] for r in PREFLIGHT_ROWS}


# ----------------------------------------------------------------------------- the convention, end to end
def test_error_in_a_dataloader_worker_is_one_line(setup, tmp_path, monkeypatch, capsys):
    """A file that passes the header check but does not decode is met by a DataLoader worker during training:
    torch re-raises it with the worker's traceback as the message; the user still gets one line, exit 2."""
    monkeypatch.chdir(tmp_path)
    gt, _ = _pairs(tmp_path / 'data', n=3)
    (gt / '002.png').write_bytes((gt / '000.png').read_bytes()[:60])  # IHDR intact (size readable), data cut
    opt = train_opt(tmp_path / 'data', name='worker', total_iter=4, batch=1, workers=1,
                    network=dict(TINY_MSRRESNET))
    opt['datasets']['train'].update(type='SeGSRBicubicDataset', use_shuffle=False)
    del opt['datasets']['train']['dataroot_lq']
    code = _run_opt(tmp_path, 'train', opt)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith('segsr-train: error: ')]
    assert len(lines) == 1 and 'Traceback' not in err, err
    assert '002.png: cannot be decoded' in lines[0] and 'DataLoader worker' not in lines[0], lines[0]


def test_worker_message_unwrapping_keeps_other_errors():
    """Only a SeGSRError from a worker is shortened; any other worker crash keeps its traceback."""
    from torch._utils import ExceptionWrapper

    from segsr_basicsr.errors import ImageError
    from segsr_basicsr.utils.cli import exit_on_user_error, worker_user_error
    for exc, user in ((ImageError('a.png: cannot be decoded; remove it.'), True), (KeyError('gt'), False)):
        try:
            raise exc
        except Exception:  # noqa: BLE001
            wrapped = ExceptionWrapper(where='in DataLoader worker process 0')
        try:
            wrapped.reraise()
        except Exception as e:  # noqa: BLE001
            reraised = e
        assert (worker_user_error(reraised) == 'a.png: cannot be decoded; remove it.') is user
        with pytest.raises(SystemExit if user else KeyError):
            with exit_on_user_error('prog'):
                raise reraised


def test_torchrun_ranks_each_print_the_line_and_exit_2(tmp_path):
    """Under torchrun every rank runs the same checks before the process group exists: each prints the one
    line and exits 2 (torchrun then reports the failed ranks), no rank waits on a collective."""
    import subprocess

    from train_opts import PYTHON, env
    _pairs(tmp_path / 'data')
    os.remove(tmp_path / 'data' / 'lq' / '001.png')
    opt_path = write_opt(tmp_path / 'ddp.yml', train_opt(tmp_path / 'data', name='ddp', network=dict(TINY_MSRRESNET)))
    cmd = [PYTHON, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', '--log-dir',
           str(tmp_path / 'logs'), '--redirects', '3', '-m', 'segsr_basicsr.train', '-opt', opt_path,
           '--launcher', 'pytorch']
    proc = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert 'failed (exitcode: 2)' in proc.stderr, proc.stderr[-3000:]  # the first rank to fail: our exit code
    logs = {int(f.parent.name): f.read_text() for f in (tmp_path / 'logs').rglob('stderr.log')}
    printed = 0
    for rank, text in logs.items():  # a rank may be stopped by torchrun (SIGTERM) before it gets there
        lines = [line for line in text.splitlines() if line.startswith('segsr-train: error: ')]
        assert len(lines) <= 1 and 'Traceback' not in text, text
        if lines:
            assert 'lq/001.png is missing' in lines[0], lines[0]
            printed += 1
    assert printed >= 1, logs
    assert not (tmp_path / 'experiments' / 'ddp').exists()


# ----------------------------------------------------------------------------- option checks from issue 14
def test_hat_top_level_tile_is_val_tile(tmp_path):
    """HAT's ``tile: {tile_size, tile_pad}`` reaches SeGSRModel as ``val.tile`` (tile + pads, overlap 2 pads),
    both through our option loading and through BasicSR's parse_options (the loader our entry points patch)."""
    import yaml

    from segsr_basicsr.training.pipeline import patch_train_loop
    from segsr_basicsr.io.option_file import load_option_file
    text = 'name: x\nval:\n  save_img: false\ntile:\n  tile_size: 64\n  tile_pad: 8\n'
    (tmp_path / 'o.yml').write_text(text)
    assert load_option_file(tmp_path / 'o.yml')['val']['tile'] == {'size': 80, 'overlap': 16}
    patch_train_loop()
    from basicsr.utils.options import ordered_yaml
    opt = yaml.load(text, Loader=ordered_yaml()[0])
    assert opt['val']['tile'] == {'size': 80, 'overlap': 16} and opt['tile'] == {'tile_size': 64, 'tile_pad': 8}
    from segsr_basicsr.options import tile_spec
    from segsr_basicsr.inference.tiling import TileSpec
    assert tile_spec(opt['val']['tile']) == TileSpec(80, 16)


def test_unknown_top_level_key_warns_with_the_nearest_name(setup, tmp_path, monkeypatch, capsys):
    """A typo (``vall:``) is named with the nearest known key; a custom key is only noted. Warnings, not
    errors: BasicSR ignores unknown keys and users keep their own in option files (docs/safety.md)."""
    from segsr_basicsr.io.option_file import unknown_top_level_keys
    msgs = unknown_top_level_keys({'name': 1, 'vall': {}, 'network_g': {}, 'network_ema': {}, 'my_sweep_id': 3,
                                   'gt_usm': True})
    assert msgs == ["unknown top-level key 'vall'; did you mean 'val'?",
                    "unknown top-level key 'my_sweep_id' (ignored)."]
    monkeypatch.chdir(tmp_path)
    _pairs(tmp_path / 'data')
    opt = _train_opt(tmp_path, setup[0] / 'ckpt' / 'truncated.pth')
    opt['loger'] = {}
    opt['scale'] = 2  # stop right after the warnings
    _run_opt(tmp_path, 'train', opt)
    err = capsys.readouterr().err
    assert "segsr-train: warning: " in err and "unknown top-level key 'loger'; did you mean 'logger'?" in err, err


# ----------------------------------------------------------------------------- unreadable entries, progress
def test_prep_skips_unreadable_entries_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hr = _hr_folder(tmp_path / 'HR', n=2)
    _loop(hr / 'loop.png')
    code, out, err = _call('make_bicubic.py', '--input', hr, '--scales', 2)
    assert code == 0, err
    assert 'make_bicubic.py: warning: skipping 1 unreadable entry' in err and 'loop.png' in err, err
    assert sorted(os.listdir(tmp_path / 'LR_x2')) == ['img0.png', 'img1.png']


def test_progress_lines_when_stderr_is_a_log(setup, tmp_path, monkeypatch, capsys):
    """Not a terminal: ``desc: done/total images (rate)`` lines instead of a tqdm bar (prep scripts, test)."""
    monkeypatch.setenv('SEGSR_PROGRESS_SECONDS', '0')
    monkeypatch.chdir(tmp_path)
    code, out, err = _call('make_bicubic.py', '--input', _hr_folder(tmp_path / 'HR', n=3), '--scales', 2)
    assert code == 0, err
    assert 'bicubic x2: 1/3 images (' in err and 'bicubic x2: 3/3 images (' in err and '\r' not in err, err
    _pairs(tmp_path / 'data')
    torch.save({'params': _tiny_state()}, tmp_path / 'net.pth')
    opt = _test_opt(tmp_path, tmp_path / 'net.pth')
    opt['model_type'] = 'SRModel'
    from segsr_basicsr.test import main
    main(['-opt', write_opt(tmp_path / 'ok.yml', opt)])
    err = capsys.readouterr().err
    assert 'test t: 1/2 images (' in err and 'test t: 2/2 images (' in err, err
    assert len(list((tmp_path / 'results' / 'bad_test' / 'visualization').rglob('*.png'))) == 2


def test_segsr_debug_shows_the_traceback(setup, tmp_path, monkeypatch):
    """SEGSR_DEBUG=1: the same error propagates as an exception (full traceback) instead of the one line."""
    from segsr_basicsr.errors import DataError
    monkeypatch.setenv('SEGSR_DEBUG', '1')
    monkeypatch.chdir(tmp_path)
    _pairs(tmp_path / 'data')
    os.remove(tmp_path / 'data' / 'lq' / '000.png')
    from segsr_basicsr.train import main
    with pytest.raises(DataError, match='lq/000.png is missing'):
        main(['-opt', write_opt(tmp_path / 'o.yml', _train_opt(tmp_path, setup[0] / 'ckpt' / 'good.pth'))])


# ============================================================================= one contract (issue 20)
# Cases nobody listed before: each must come out of the shared checks (options, paths, devices, images),
# not from a row-specific rule. Every row: exit code 2 (or the package's error from the API), one line naming
# the culprit, no traceback, and nothing created: no experiments/ or results/ folder, no output file.
from segsr_basicsr.archs.tiny_configs import TINY_EDSR, TINY_GUIDANCE  # noqa: E402


def _guided():
    return dict(type='SeGSR_HAT', **TINY_HAT, guidance=dict(TINY_GUIDANCE))


def _contract_train_opt(tmp_path):
    opt = train_opt(tmp_path / 'data', name='contract', total_iter=1, network=_guided())
    opt['val'] = {'val_freq': 1, 'save_img': False, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4}}}
    opt['datasets']['val'] = dict(name='v', type='PairedImageDataset', dataroot_gt=str(_gt(tmp_path)),
                                  dataroot_lq=str(_lq(tmp_path)), io_backend={'type': 'disk'})
    return opt


# (id, entry, opt edits, fragments)
CONTRACT_OPTION_ROWS = [
    ('guidance value misspelt', 'train', {'network_g:guidance:tune': 'lroa'},
     ['network_g:guidance.tune must be one of lora, frozen, full', "did you mean 'lora'"]),
    ('guidance key misspelt', 'train', {'network_g:guidance:lora_rnak': 4},
     ['guidance.lora_rnak is not a guidance option', "did you mean 'lora_rank'"]),
    ('unknown CLIP model', 'train', {'network_g:guidance:clip_model': 'ViT-B-61'},
     ["guidance.clip_model: 'ViT-B-61' is not an open_clip model"]),
    ('CLIP weights file missing', 'train', {'network_g:guidance:clip_pretrained': '/nowhere/clip.bin'},
     ["'/nowhere/clip.bin' is neither an open_clip pretrained tag", 'nor an existing local checkpoint file']),
    ('arch key misspelt', 'train', {'network_g:embed_dims': 16},
     ['network_g:embed_dims is not an option of SeGSR_HAT', "did you mean 'embed_dim'"]),
    ('arch refuses a value', 'train', {'network_g:window_size': 0},
     ['network_g: SeGSR_HAT: window_size=0 must be an int >= 2']),
    ('arch lists that do not match', 'train', {'network_g:depths': [1, 1, 1]},
     ['network_g: SeGSR_HAT: len(depths)=3 != len(num_heads)=2']),
    ('validation key misspelt', 'train', {'val:save_imgs': True},
     ['val:save_imgs is not a validation option', "did you mean 'save_img'"]),
    ('validation amp misspelt', 'train', {'val:amp': 'bf61'}, ["val:amp must be one of", "did you mean 'bf16'"]),
    ('optimizer name in the wrong case', 'train', {'train:optim_g:type': 'Adamw'},
     ['train:optim_g:type must be one of', "did you mean 'AdamW'"]),
    ('learning rate is text', 'train', {'train:optim_g:lr': 'fast'},
     ["'train:optim_g:lr' must be an integer or a number, got 'fast'"]),
    ('scheduler misspelt', 'train', {'train:scheduler:type': 'MultiStepLRR'},
     ['train:scheduler:type must be one of', "did you mean 'MultiStepLR'"]),
    ('loss misspelt', 'train', {'train:pixel_opt:type': 'L1Los'},
     ["train:pixel_opt:type 'L1Los' is not a registered BasicSR loss", 'L1Loss']),
    ('metric misspelt', 'train', {'val:metrics:psnr:type': 'calculate_psnrr'},
     ["val:metrics:psnr:type 'calculate_psnrr' is not a registered BasicSR metric", 'calculate_psnr']),
    ('seed is text', 'train', {'manual_seed': 'abc'}, ["manual_seed must be an integer >= 0 or ~ (random), got 'abc'"]),
    ('name climbs out of experiments', 'train', {'name': '..'}, ["name '..' must be a plain folder name"]),
    ('name with a slash', 'train', {'name': 'runs/a'}, ["name 'runs/a' must be a plain folder name"]),
    ('EMA decay above one', 'train', {'train:ema_decay': 2}, ['train:ema_decay must be a number in [0, 1)']),
    ('storage backend misspelt', 'train', {'datasets:train:io_backend': {'type': 'lmbd'}},
     ['datasets:train:io_backend:type must be one of disk, lmdb, memcached', "did you mean 'lmdb'"]),
    ('augmentation flag is text', 'train', {'datasets:train:use_hflip': 'yes'},
     ["datasets:train:use_hflip must be true or false, got 'yes'"]),
    ('strict loading flag is text', 'train', {'path:strict_load_g': 'yes'},
     ["path:strict_load_g must be true or false, got 'yes'"]),
    ('test: tile is text', 'test', {'val:tile': 'big'}, ["val:tile size must be a whole number >= 1, got 'big'"]),
    ('test: self-ensemble is text', 'test', {'val:self_ensemble': 'yes'},
     ["val:self_ensemble must be true or false, got 'yes'"]),
    ('test: tile section key misspelt', 'test', {'val:tile': {'sise': 64}},
     ["val:tile: unknown key 'sise' (did you mean 'size'?)"]),
]


@pytest.mark.parametrize('row', CONTRACT_OPTION_ROWS, ids=[r[0] for r in CONTRACT_OPTION_ROWS])
def test_option_contract_refuses_before_anything_is_created(row, tmp_path, monkeypatch, capsys):
    name, entry, edits, fragments = row
    monkeypatch.chdir(tmp_path)
    _pairs(tmp_path / 'data')
    opt = _contract_train_opt(tmp_path) if entry == 'train' else _test_opt(tmp_path, None, _guided())
    if entry == 'test':
        opt['path'] = {}
    for key, value in edits.items():
        _set(opt, key, value)
    code = _run_opt(tmp_path, entry, opt)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f'segsr-{entry}: error: ')]
    assert code == 2 and len(lines) == 1 and 'Traceback' not in err, err
    message = lines[0]
    for fragment in fragments:
        assert fragment in message, f'{fragment!r} not in {message!r}'
    assert not (tmp_path / 'experiments').exists() and not (tmp_path / 'results').exists()


def test_test_option_file_without_save_img_runs(tmp_path, monkeypatch, capsys):
    """BasicSR's test pipeline reads val.save_img unconditionally; ours defaults it to false."""
    monkeypatch.chdir(tmp_path)
    _pairs(tmp_path / 'data')
    opt = _test_opt(tmp_path, None)
    opt['path'], opt['model_type'] = {}, 'SRModel'
    del opt['val']['save_img']
    from segsr_basicsr.test import main
    main(['-opt', write_opt(tmp_path / 'ok.yml', opt)])
    assert list((tmp_path / 'results' / 'bad_test').glob('test_bad_test_*.log'))  # ran to its log
    assert not list((tmp_path / 'results').rglob('*.png'))  # save_img off: no images


@pytest.fixture(scope='module')
def edsr_ckpt(tmp_path_factory):
    from basicsr.archs import build_network

    from segsr_basicsr.io.checkpoint import network_metadata
    root = tmp_path_factory.mktemp('contract_ckpt')
    net = build_network(dict(TINY_EDSR))
    torch.save({'params': net.state_dict(), **network_metadata({'network_g': TINY_EDSR, 'scale': 4})},
               root / 'net.pth')
    return root / 'net.pth'


def _inputs(d, n=3):
    folder = d / 'in'
    _hr_folder(folder, n=n, h=12, w=16)
    return folder


# (id, argv maker (tmp_path, checkpoint) -> list, fragments); outputs go to tmp_path / 'out' unless a row says
CONTRACT_INFER_ROWS = [
    ('output under an existing file', lambda d, c: ['--input', _inputs(d), '--output', _add(d, 'f.png') / 'f.png' / 'o'],
     ['f.png is a file, not a folder']),
    ('device name that is not a device', lambda d, c: ['--input', _inputs(d), '--device', 'gpu'],
     ["--device 'gpu' is not a device name: use cpu, cuda, cuda:N or auto"]),
    ('CUDA device on a machine without CUDA', lambda d, c: ['--input', _inputs(d), '--device', 'cuda:1'],
     ['--device cuda:1: CUDA is not available here']),
    ('undecodable image after good ones', lambda d, c: ['--input', _bad(_inputs(d), 'zz.png')],
     ['in/zz.png', 'cannot be decoded']),
    ('range mapping refused before any output', lambda d, c: ['--input', _inputs(d), '--max-value', 0],
     ['--max-value must be > 0']),
    ('checkpoint path is a folder', lambda d, c: ['--input', _inputs(d), '--model', c.parent],
     ['is a folder, not a file']),
    ('an input named twice', lambda d, c: ['--input', _inputs(d) / 'img0.png', d / 'in' / '.' / 'img0.png'],
     ['--input names', 'twice']),
    ('empty input path', lambda d, c: ['--input', ''], ["--input '': an empty path"]),
    ('negative tile', lambda d, c: ['--input', _inputs(d), '--tile', -3],
     ['--tile size must be a whole number >= 1, got -3']),
    ('overlap as large as the tile', lambda d, c: ['--input', _inputs(d), '--tile', 8, '--tile-overlap', 8],
     ['--tile overlap 8 must be smaller than the tile size 8']),
    ('zero tiles per batch', lambda d, c: ['--input', _inputs(d), '--tile', 8, '--tile-batch', 0],
     ['--tile batch must be a whole number >= 1, got 0']),
]


@pytest.mark.parametrize('row', CONTRACT_INFER_ROWS, ids=[r[0] for r in CONTRACT_INFER_ROWS])
def test_infer_refuses_before_any_output(row, edsr_ckpt, tmp_path, monkeypatch, capsys):
    from segsr_basicsr.infer import main
    name, make_args, fragments = row
    monkeypatch.chdir(tmp_path)
    args = [str(a) for a in make_args(tmp_path, edsr_ckpt)]
    if '--model' not in args:
        args = ['--model', str(edsr_ckpt)] + args
    if '--output' not in args:
        args += ['--output', str(tmp_path / 'out')]
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob('*') if p.is_file()}
    with pytest.raises(SystemExit) as exc:
        main(args + ['--no-progress'])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and 'Traceback' not in err, err
    lines = [line for line in err.splitlines() if line.startswith('segsr-infer: error: ')]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], f'{fragment!r} not in {lines[0]!r}'
    assert not (tmp_path / 'out').exists()
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob('*') if p.is_file()} == before  # inputs untouched


# (id, script, args maker (tmp_path) -> list, fragments, outputs that must not exist) -- as PREP_ROWS
CONTRACT_PREP_ROWS = [
    ('make_bicubic: image too small for the bicubic at its scale', 'make_bicubic.py',
     lambda d: ['--input', _hr_folder(d / 'HR', n=1, h=3, w=3), '--scales', 2],
     ['HR/img0.png', '3x3 is smaller than 4, the least that gives 2 LR pixels a side at scale 2'],
     ['HR_x2', 'LR_x2']),
    ('split_dataset: negative seed', 'split_dataset.py',
     lambda d: ['--src', _classes(d / 'src'), '--out', d / 'out', '--seed', -1],
     ['--seed must be an integer >= 0, got -1'], ['out']),
    ('split_dataset: output inside the source', 'split_dataset.py',
     lambda d: ['--src', _classes(d / 'src'), '--out', d / 'src' / 'farm' / 'split'],
     ['--out', 'is inside the input', 'src'], ['src/farm/split']),
    ('extract_subimages: output inside the input', 'extract_subimages.py',
     lambda d: ['--input', _hr_folder(d / 'big', h=64, w=64), '--out', d / 'big' / 'subs', '--crop-size', 32],
     ['--out', 'is inside the input', 'big'], ['big/subs']),
]


@pytest.mark.parametrize('row', CONTRACT_PREP_ROWS, ids=[r[0] for r in CONTRACT_PREP_ROWS])
def test_prep_contract_refuses_before_any_work(row, tmp_path, monkeypatch):
    test_prep_script_refuses_before_any_work(row, tmp_path, monkeypatch)


def _api_model(ckpt):
    import segsr_basicsr
    return segsr_basicsr.load_model(ckpt, device='cpu')


_RGB = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)

# (id, call (tmp_path, checkpoint) -> anything, error type name, fragments, paths that must not exist)
CONTRACT_API_ROWS = [
    ('NaN pixels', lambda d, c: _api_model(c).upscale(np.full((8, 8, 3), np.nan, np.float32)),
     'RasterError', ['has NaN or infinite values at valid pixels'], []),
    ('float pixels above one', lambda d, c: _api_model(c).upscale(np.full((8, 8, 3), 3.0, np.float32)),
     'RasterError', ['values span 3..3, outside the 0..1', 'would be clipped'], []),
    ('16-bit values above max_value',
     lambda d, c: _api_model(c).upscale(np.full((8, 8, 3), 5000, np.uint16), max_value=4095),
     'RasterError', ['values span 5000..5000, outside the 0..4095'], []),
    ('empty array', lambda d, c: _api_model(c).upscale(np.zeros((0, 0, 3), np.uint8)),
     'InferError', ['the image is 0x0 pixels; there is nothing to upscale'], []),
    ('boolean array', lambda d, c: _api_model(c).upscale(np.zeros((8, 8, 3), bool)),
     'RasterError', ['values of type bool are not image data'], []),
    ('tile given as text', lambda d, c: _api_model(c).upscale(_RGB, tile='big'),
     'OptionError', ["tile size must be a whole number >= 1, got 'big'"], []),
    ('API: device name that is not a device', lambda d, c: __import__('segsr_basicsr').load_model(c, device='gpu'),
     'OptionError', ["--device 'gpu' is not a device name"], []),
    ('autocast dtype misspelt', lambda d, c: __import__('segsr_basicsr').load_model(c, amp='bf61'),
     'OptionError', ["did you mean 'bf16'"], []),
    ('scene output is the input', lambda d, c: _api_model(c).upscale_raster(_img(d / 's.png', 12, 16), d / 's.png'),
     'DataError', ['is the input', "refusing to overwrite it"], []),
    ('scene output under a file',
     lambda d, c: _api_model(c).upscale_raster(_img(d / 's.png', 12, 16), d / 's.png' / 'o.tif'),
     'DataError', ['s.png is a file, not a folder'], ['s.png/o.tif']),
    ('scene input missing', lambda d, c: _api_model(c).upscale_raster(d / 'nope.tif', d / 'o.tif'),
     'DataError', ['nope.tif: no such file'], ['o.tif']),
]


@pytest.mark.parametrize('row', CONTRACT_API_ROWS, ids=[r[0] for r in CONTRACT_API_ROWS])
def test_api_raises_the_package_error_with_the_same_sentence(row, edsr_ckpt, tmp_path):
    from segsr_basicsr.errors import SeGSRError
    name, call, kind, fragments, absent = row
    with pytest.raises(SeGSRError) as exc:
        call(tmp_path, edsr_ckpt)
    assert type(exc.value).__name__ == kind, (type(exc.value), exc.value)
    message = str(exc.value)
    assert '\n' not in message
    for fragment in fragments:
        assert fragment in message, f'{fragment!r} not in {message!r}'
    for path in absent:
        assert not (tmp_path / path).exists(), path
    for p in tmp_path.rglob('*'):  # inputs written by the row are unchanged: no output replaced one
        if p.is_file() and p.suffix == '.png':
            assert cv2.imread(str(p)) is not None


def test_contract_rows_are_many_and_cover_every_entry_point():
    rows = CONTRACT_OPTION_ROWS + CONTRACT_INFER_ROWS + CONTRACT_PREP_ROWS + CONTRACT_API_ROWS
    assert len({r[0] for r in rows}) == len(rows) >= 40
    assert {'train', 'test'} <= {r[1] for r in CONTRACT_OPTION_ROWS}
    assert CONTRACT_INFER_ROWS and CONTRACT_API_ROWS and CONTRACT_PREP_ROWS
