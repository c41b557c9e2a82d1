"""Advice that leads to correct runs (issue 32, item 4).

A message may suggest ``strict_load_g: false`` only where following it loads every weight the file has into
the network (a plain backbone file, the guidance starting from scratch); for a file of another network or
scale it says what the file holds instead. A resume under another network_g or scale, or past
``train:total_iter``, is refused in one line saying what the state holds, before anything is written.
"""
import copy
import logging
import os
from pathlib import Path

import pytest
import torch

import segsr_basicsr  # noqa: F401  (compat layer before basicsr)
from segsr_basicsr.archs.tiny_configs import TINY_EDSR, TINY_GUIDANCE

from train_opts import train_opt, write_opt, write_pairs


@pytest.fixture(autouse=True)
def _fresh_basicsr_logger():
    """In-process runs: let each set up BasicSR's logger, as a new process would."""
    yield
    from basicsr.utils import logger as basicsr_logger
    logging.getLogger('basicsr').handlers.clear()
    basicsr_logger.initialized_logger.pop('basicsr', None)


def _train(tmp_path, opt, *extra, capsys=None):
    """segsr_basicsr.train.main in-process in ``tmp_path``: (exit code, the error line or '')."""
    from segsr_basicsr.train import main
    path = write_opt(tmp_path / f'{opt["name"]}.yml', opt)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        main(['-opt', path, *extra])
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err if capsys else ''
    lines = [line for line in err.splitlines() if 'error:' in line]
    assert len(lines) <= 1, err
    return code, (lines[0] if lines else '')


def _edsr(**kw):
    net = copy.deepcopy(TINY_EDSR)
    net.update(kw)
    return net


def _state_of(net_opt):
    from basicsr.archs import build_network
    return build_network(copy.deepcopy(net_opt)).state_dict()


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('advice')
    write_pairs(root / 'data', n=2, gt_size=32)
    return root / 'data'


def _opt(data, name, network, **path):
    opt = train_opt(data, name=name, total_iter=1, save_freq=1, network=network, ema=0)
    opt['path'].update(path)
    return opt


def test_strict_load_hint_followed_loads_every_backbone_weight(data, tmp_path, capsys):
    """A plain backbone file into a guided network: the message suggests strict_load_g: false, and the run that
    follows it starts from every weight of the file (the guidance new)."""
    plain = _state_of(_edsr())
    torch.save({'params': plain}, tmp_path / 'plain.pth')
    guided = _edsr(guidance=dict(TINY_GUIDANCE))
    opt = _opt(data, 'hint', guided, pretrain_network_g=str(tmp_path / 'plain.pth'), strict_load_g=True)
    code, line = _train(tmp_path, opt, capsys=capsys)
    assert code == 2 and 'set path:strict_load_g: false' in line and 'no weights for the guidance' in line, line
    assert not (tmp_path / 'experiments').exists()

    opt['path']['strict_load_g'] = False  # the advice, followed
    opt['train']['optim_g']['lr'] = 1e-12  # one step that leaves the loaded weights where they were
    code, line = _train(tmp_path, opt, capsys=capsys)
    assert code == 0, line
    saved = torch.load(tmp_path / 'experiments' / 'hint' / 'models' / 'net_g_1.pth', weights_only=True)['params']
    for key, value in plain.items():
        assert torch.allclose(saved[key].float(), value.float(), atol=1e-6), key
    assert any(k.startswith('guidance.') for k in saved)


@pytest.mark.parametrize('case', ['other scale', 'other width', 'missing backbone part'])
def test_strict_load_false_never_trains_a_partly_random_network(case, data, tmp_path, capsys):
    """strict_load_g: false with a file of another network or scale is refused in one line naming what the file
    holds, and never advises strict_load_g: false (it would not help)."""
    from segsr_basicsr.io.checkpoint import network_metadata
    if case == 'other scale':
        net = _edsr(upscale=2)
        ckpt = {'params': _state_of(net), **network_metadata({'network_g': net, 'scale': 2})}
        expected = 'it holds SeGSR_EDSR x2 (num_feat 8, num_block 2, without guidance)'
    elif case == 'other width':
        ckpt = {'params': _state_of(_edsr(num_feat=16))}
        expected = 'it does not record its network_g'
    else:
        ckpt = {'params': {k: v for k, v in _state_of(_edsr()).items() if not k.startswith('conv_first')}}
        expected = "missing key(s) ['conv_first"
    torch.save(ckpt, tmp_path / 'other.pth')
    opt = _opt(data, 'other', _edsr(guidance=dict(TINY_GUIDANCE)), pretrain_network_g=str(tmp_path / 'other.pth'),
               strict_load_g=False)
    code, line = _train(tmp_path, opt, capsys=capsys)
    assert code == 2, line
    assert expected in line and 'SeGSR_EDSR x4' in line and 'option file it was trained with' in line, line
    assert 'set path:strict_load_g: false' not in line
    assert not (tmp_path / 'experiments').exists()


@pytest.fixture(scope='module')
def trained(data, tmp_path_factory):
    """A run of 2 iterations with a training state at 2 (cwd of the run, its option dict)."""
    root = tmp_path_factory.mktemp('resume')
    opt = train_opt(data, name='run', total_iter=2, save_freq=2, network=_edsr(), ema=0)
    code, _ = _train(root, opt)
    assert code == 0
    assert (root / 'experiments' / 'run' / 'training_states' / '2.state').is_file()
    return root, opt


def _listing(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob('*'))


@pytest.mark.parametrize('change', ['total_iter below the state', 'other width', 'other type', 'auto_resume, other width'])
def test_resume_that_would_mislabel_or_mix_networks_is_refused(change, trained, capsys):
    root, base = trained
    opt = copy.deepcopy(base)
    extra = []
    if change.startswith('auto_resume'):
        extra = ['--auto_resume']
    else:
        opt['path']['resume_state'] = str(root / 'experiments' / 'run' / 'training_states' / '2.state')
    if change == 'total_iter below the state':
        opt['train']['total_iter'] = 1
        expected = ['it is at iteration 2, past train:total_iter 1', 'Raise train:total_iter above 2', 'net_g_2.pth']
    elif change == 'other type':
        opt['network_g'] = dict(type='MSRResNet', num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, upscale=4)
        expected = ['holds SeGSR_EDSR x4 (num_feat 8', 'builds MSRResNet x4', "network_g:type 'SeGSR_EDSR' -> "
                    "'MSRResNet'", 'option file of that run']
    else:
        opt['network_g']['num_feat'] = 16
        expected = ['holds SeGSR_EDSR x4 (num_feat 8', 'network_g:num_feat 8 -> 16', 'under another name']
    before = _listing(root)
    code, line = _train(root, opt, *extra, capsys=capsys)
    assert code == 2, line
    assert 'Cannot resume from' in line and '2.state' in line, line
    for fragment in expected:
        assert fragment in line, (fragment, line)
    assert _listing(root) == before  # nothing written, nothing renamed


def test_resume_with_the_same_network_and_more_iterations_continues(trained, capsys):
    root, base = trained
    opt = copy.deepcopy(base)
    opt['train']['total_iter'] = 3
    opt['path']['resume_state'] = str(root / 'experiments' / 'run' / 'training_states' / '2.state')
    code, line = _train(root, opt, capsys=capsys)
    assert code == 0, line
    meta = torch.load(root / 'experiments' / 'run' / 'models' / 'net_g_latest.pth', weights_only=True)
    assert meta['segsr_network']['iter'] == 3


def test_api_with_another_option_file_says_what_the_checkpoint_holds(tmp_path):
    """load_model(checkpoint, opt=...) of another scale: one line with what the file holds, and the way out."""
    from segsr_basicsr import load_model
    from segsr_basicsr.errors import InferError
    from segsr_basicsr.io.checkpoint import network_metadata
    net = _edsr(upscale=2)
    torch.save({'params': _state_of(net), **network_metadata({'network_g': net, 'scale': 2})}, tmp_path / 'x2.pth')
    with pytest.raises(InferError) as err:
        load_model(tmp_path / 'x2.pth', device='cpu', opt={'network_g': _edsr()})
    message = str(err.value)
    assert '\n' not in message and 'it holds SeGSR_EDSR x2' in message and 'option file the model was trained' \
        in message, message
    assert load_model(tmp_path / 'x2.pth', device='cpu').info.scale == 2  # without opt: the file's own network_g


def test_checkpoint_of_a_network_with_a_tagged_clip_passes_the_check(tmp_path, monkeypatch):
    """A guided network whose frozen CLIP comes from an open_clip tag saves no CLIP tensors; the check before
    the run (which builds the network without downloading the tag) reads its checkpoint as the run does."""
    import open_clip

    from segsr_basicsr.archs.network_options import _try_build, check_pretrained
    real = open_clip.get_pretrained_cfg
    monkeypatch.setattr(open_clip, 'get_pretrained_cfg',
                        lambda name, tag: {'url': 'x'} if tag == 'fake-tag' else real(name, tag))
    network = _edsr(guidance=dict(TINY_GUIDANCE, clip_pretrained='fake-tag'))
    saved = _try_build(network, network['type'], 'o.yml').state_dict()  # what a run with the tag saves
    assert not any('.encoder.visual.' in k and 'lora_' not in k for k in saved)
    assert any('lora_' in k for k in saved)
    torch.save({'params': saved}, tmp_path / 'tagged.pth')
    opt = {'network_g': network, 'scale': 4, 'path': {'pretrain_network_g': str(tmp_path / 'tagged.pth')}}
    check_pretrained(opt, 'o.yml', _try_build(network, network['type'], 'o.yml'))  # accepted: CLIP from the tag
    torch.save({'params': {k: v for k, v in saved.items() if 'lora_' not in k}}, tmp_path / 'no_lora.pth')
    opt['path']['pretrain_network_g'] = str(tmp_path / 'no_lora.pth')
    with pytest.raises(segsr_basicsr.errors.CheckpointError, match='no weights for the guidance|missing key'):
        check_pretrained(opt, 'o.yml', _try_build(network, network['type'], 'o.yml'))
