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
     ['other_arch.pth', 'do not fit network MSRResNet', 'size mismatch', 'strict_load_g']),
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


def test_the_shipped_option_files_pass_the_checks(tmp_path):
    """The checks must not refuse what BasicSR accepts (e.g. ``save_checkpoint_freq: !!float 5e3``)."""
    from segsr_basicsr.utils.options import load_option_file, validate_options
    (tmp_path / 'folder').mkdir()
    (tmp_path / 'file.pth').write_bytes(b'')
    files = sorted((Path(__file__).resolve().parents[1] / 'options').rglob('*.yml'))
    assert files
    for f in files:
        opt = load_option_file(f)
        for dataset in opt['datasets'].values():
            for key in [k for k in dataset if k.startswith('dataroot') or k == 'meta_info_file']:
                dataset[key] = str(tmp_path / ('file.pth' if key == 'meta_info_file' else 'folder'))
        for key in [k for k in opt['path'] if k.startswith('pretrain_network') and opt['path'][k]]:
            opt['path'][key] = str(tmp_path / 'file.pth')
        validate_options(opt, f, is_train=f.name.startswith('train'))
