"""Bad input, generated rather than listed: every key of a valid training option file and every file reader,
mutated. Each mutant is either accepted or refused with one :class:`SeGSRError` line (exit code 2 through the
entry point), never another exception, and nothing is made on disk before the refusal.

Option mutants come from walking the option file (so a key added to ``tests/train_opts.py`` or a new section
is covered without a new test); reader mutants come from the :data:`READERS` table crossed with
:data:`CORRUPTIONS` (a new reader is one row; every other reader's valid file is its "other schema" input).
"""
import copy
import json
import math
import os
import traceback
from pathlib import Path

import pytest
import torch
import yaml

import segsr_basicsr  # noqa: F401  (compat layer before basicsr)
from segsr_basicsr.errors import SeGSRError

from train_opts import TINY_MSRRESNET, train_opt, write_opt, write_pairs

_DEL = object()


# ----------------------------------------------------------------------------- the valid starting point
def _good_checkpoint(path, opt):
    from basicsr.archs.srresnet_arch import MSRResNet

    from segsr_basicsr.io.checkpoint import network_metadata
    net = MSRResNet(**{k: v for k, v in TINY_MSRRESNET.items() if k != 'type'})
    torch.save({'params': net.state_dict(), **network_metadata(opt)}, path)
    return str(path)


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    """(root, a valid training option dict with validation and a pretrained file) that the checks accept."""
    root = tmp_path_factory.mktemp('generated')
    write_pairs(root / 'data', n=2)
    opt = train_opt(root / 'data', name='gen', total_iter=1, save_freq=1, val_freq=1, network=dict(TINY_MSRRESNET))
    opt['path']['pretrain_network_g'] = _good_checkpoint(root / 'good.pth', opt)
    opt['path']['param_key_g'] = 'params'
    return root, opt


def _check_entry(opt_file, work):
    """The entry point's validation pass (option file, contract, inputs, pretrained weights), in ``work``."""
    from segsr_basicsr.training.pipeline import _check_args
    cwd = os.getcwd()
    os.chdir(work)
    try:
        _check_args(['-opt', str(opt_file)], is_train=True)
    finally:
        os.chdir(cwd)


def _outcome(call):
    """'accepted', 'refused' (one SeGSRError line / exit 2), or the traceback of anything else (a bug)."""
    try:
        call()
    except SeGSRError as e:
        return 'refused' if '\n' not in str(e) and str(e).strip() else f'multi-line or empty message: {e!r}'
    except SystemExit as e:
        return 'refused' if e.code == 2 else f'exit code {e.code}'
    except Exception:  # noqa: BLE001 - what this file looks for
        return traceback.format_exc(limit=-3)
    return 'accepted'


# ----------------------------------------------------------------------------- option mutants
def key_paths(node, prefix=()):
    """Every key path of a nested option dict (lists are values)."""
    for key, value in node.items():
        yield prefix + (key, )
        if isinstance(value, dict):
            yield from key_paths(value, prefix + (key, ))


def _typo(key):
    key = str(key)
    swapped = key[:-2] + key[-1] + key[-2] if len(key) > 2 else key
    return swapped if swapped != key else key + key[-1]


def mutations(value):
    """(label, new value) for a key holding ``value``: delete, wrong types, empty, and for numbers
    non-finite, negative and zero values."""
    out = [('deleted', _DEL), ('empty string', ''), ('a list', [1]), ('a mapping', {'x': 1}), ('null', None)]
    if isinstance(value, dict):
        out.append(('a string for a section', 'oops'))
    elif isinstance(value, bool):
        out.append(('a word for a flag', 'yes'))
    elif isinstance(value, (int, float)):
        out += [('text for a number', 'seven'), ('NaN', math.nan), ('inf', math.inf), ('-inf', -math.inf),
                ('negative', -1), ('zero', 0), ('fraction', 0.5), ('true for a number', True)]
    elif isinstance(value, str):
        out += [('a number for a string', 7), ('a misspelt value', _typo(value))]
    return out


def option_mutants(opt):
    """(description, mutated option dict) for every key path and mutation, plus a misspelt sibling key."""
    for path in key_paths(opt):
        parent = opt
        for key in path[:-1]:
            parent = parent[key]
        leaf = path[-1]
        where = ':'.join(map(str, path))
        for label, new in mutations(parent[leaf]):
            yield f'{where} {label}', _mutated(opt, path, new)
        yield f'{where} beside a misspelt sibling', _mutated(opt, path[:-1] + (_typo(leaf), ), parent[leaf])


def _mutated(opt, path, new):
    out = copy.deepcopy(opt)
    node = out
    for key in path[:-1]:
        node = node[key]
    if new is _DEL:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = copy.deepcopy(new)
    return out


@pytest.fixture(scope='module')
def option_outcomes(base, tmp_path_factory):
    """[(description, mutant, outcome, what was made in the working folder)] for every option mutant, through
    the entry point's validation pass."""
    root, opt = base
    tmp = tmp_path_factory.mktemp('mutants')
    work = tmp / 'work'
    work.mkdir()
    out = []
    for i, (what, mutant) in enumerate(option_mutants(opt)):
        opt_file = write_opt(tmp / f'm{i}.yml', mutant)
        out.append((what, mutant, _outcome(lambda: _check_entry(opt_file, work)), os.listdir(work)))
    return out


def test_every_option_mutant_is_accepted_or_one_line_before_anything_is_made(option_outcomes, capsys):
    bugs = [f'{what}: {result}' for what, _, result, _ in option_outcomes if result not in ('accepted', 'refused')]
    bugs += [f'{what}: made {made} before the check ended' for what, _, _, made in option_outcomes if made]
    outcomes = {what: result for what, _, result, _ in option_outcomes}
    with capsys.disabled():
        print(f'\n{len(outcomes)} generated option mutants: {sum(r == "refused" for r in outcomes.values())} '
              f'refused, {sum(r == "accepted" for r in outcomes.values())} accepted')
    assert not bugs, '\n'.join(bugs)
    assert len(outcomes) >= 300
    # what the contract must refuse, whatever else is accepted (the generator is not vacuous)
    for what in ('name deleted', 'train:total_iter NaN', 'train:optim_g:lr inf', 'datasets:train:gt_size deleted',
                 'network_g:num_feat negative', 'path:pretrain_network_g a number for a string',
                 'train:pixel_opt deleted', 'datasets:train:io_backend deleted', 'train:scheduler:gamma text for a number',
                 'train:warmup_iter null', 'logger:use_tb_logger deleted', 'val:metrics:psnr:crop_border deleted'):
        assert outcomes[what] == 'refused', what


def _sample(items, k):
    step = max(1, len(items) // k)
    return items[::step][:k]


def test_accepted_mutants_train_and_refused_ones_exit_2_through_the_entry_point(option_outcomes, tmp_path,
                                                                             monkeypatch, capsys):
    """``segsr_basicsr.train.main`` in-process: every accepted mutant trains its one iteration (a check that
    accepts what training then crashes on is a bug); a sample of refused ones exits 2 with one line, no folder."""
    from segsr_basicsr.train import main
    monkeypatch.chdir(tmp_path)
    refused = [(w, m) for w, m, r, _ in option_outcomes if r == 'refused']
    accepted = [(w, m) for w, m, r, _ in option_outcomes if r == 'accepted']
    bugs = []
    for i, (what, mutant) in enumerate(_sample(refused, 12) + accepted):
        mutant = copy.deepcopy(mutant)
        if isinstance(mutant.get('name'), str):
            mutant['name'] = f'run{i}'
        path = write_opt(tmp_path / f'run{i}.yml', mutant)
        code = _run_main(main, path)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if 'error:' in line]
        if code == 2:
            if len(lines) != 1 or 'Traceback' in err or (tmp_path / 'experiments' / f'run{i}').exists():
                bugs.append(f'{what}: exit 2 but {len(lines)} error lines, or a folder made:\n{err[-800:]}')
        elif code not in (0, None):
            bugs.append(f'{what}: {code}')
    assert not bugs, '\n'.join(bugs)


def _run_main(main, path):
    import logging

    from basicsr.utils import logger as basicsr_logger
    try:
        main(['-opt', path])
    except SystemExit as e:
        return e.code
    except Exception:  # noqa: BLE001
        return traceback.format_exc(limit=-3)
    finally:  # a new process would set up its own logger
        logging.getLogger('basicsr').handlers.clear()
        basicsr_logger.initialized_logger.pop('basicsr', None)
    return 0


# ----------------------------------------------------------------------------- reader mutants
def _torch_bytes(obj):
    import io
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _png_bytes():
    import cv2
    import numpy as np
    return cv2.imencode('.png', np.full((8, 8, 3), 128, np.uint8))[1].tobytes()


def _safetensors_bytes(tmp):
    from segsr_basicsr.io.checkpoint import load_checkpoint, save_safetensors
    save_safetensors(load_checkpoint(tmp / 'good.pth')['params'], None, tmp / 'x.safetensors')
    return (tmp / 'x.safetensors').read_bytes()


def _option_file(root, opt, file):
    _check_entry(file, root / 'work')


def _pretrained(root, opt, file):
    from segsr_basicsr.archs.network_options import check_pretrained
    from segsr_basicsr.options import validate_options
    opt = copy.deepcopy(opt)
    opt['path']['pretrain_network_g'] = str(file)
    check_pretrained(opt, 'gen.yml', validate_options(opt, 'gen.yml'))


def _resume_state(root, opt, file):
    from segsr_basicsr.training.pipeline import load_resume_state
    opt = copy.deepcopy(opt)
    models = root / 'resume_models'
    models.mkdir(exist_ok=True)
    torch.save({'params': {}}, models / 'net_g_1.pth')
    opt['path'].update(resume_state=str(file), models=str(models), training_states=str(file.parent))
    opt['auto_resume'] = False
    load_resume_state(opt)


def _image(root, opt, file):
    from segsr_basicsr.io.images import image_size, read_image
    image_size(file)
    read_image(file)


def _results(root, opt, file):
    from segsr_basicsr.report import main
    import shutil
    (root / 'report_out').mkdir(exist_ok=True)  # --out is checked, not created: its folder exists
    try:
        main([str(file), '--out', str(root / 'report_out' / 'report'), '--no-bicubic'])
    finally:
        shutil.rmtree(root / 'report_out')


def _meta_info(root, opt, file):
    from segsr_basicsr.options import validate_options
    (file.parent / 'data.mdb').write_bytes(b'')
    opt = copy.deepcopy(opt)
    opt['datasets']['train'].update(io_backend={'type': 'lmdb'}, dataroot_gt=str(file.parent),
                                    dataroot_lq=str(file.parent))
    validate_options(opt, 'gen.yml')


def _split_list(root, opt, file):
    from segsr_basicsr.data.prep import read_split_dir
    read_split_dir(file.parent, {'a': ['a/x.png', 'a/y.png']})


_RESULTS = {'run': 'r', 'scale': 4, 'iter': 1, 'datasets': {'d': {'metrics': {'psnr': 30.0}, 'metric_options': {'psnr': {}}, 'images': 1,
                                           'digest': 'x', 'per_image': {'x': {'psnr': 30.0}}}}}

#: name -> (file name in its folder, valid content, the reader as the package calls it, valid container of a
#: wrong type). A new reader is one row here.
READERS = {
    'option file': ('opt.yml', lambda t, o: yaml.safe_dump(o).encode(), _option_file, b'- a\n- b\n'),
    'pretrained checkpoint': ('w.pth', lambda t, o: (t / 'good.pth').read_bytes(), _pretrained,
                              _torch_bytes(torch.zeros(3))),
    'pretrained safetensors': ('w.safetensors', lambda t, o: _safetensors_bytes(t), _pretrained, b'{}'),
    'training state': ('1.state', lambda t, o: _torch_bytes({'iter': 1, 'epoch': 0, 'optimizers': [],
                                                                  'schedulers': []}), _resume_state,
                       _torch_bytes([1, 2])),
    'image': ('x.png', lambda t, o: _png_bytes(), _image, _torch_bytes({'a': 1})),
    'results file': ('results.json', lambda t, o: json.dumps(_RESULTS).encode(), _results, b'[1, 2]'),
    'LMDB meta_info.txt': ('meta_info.txt', lambda t, o: b'000.png (32,32,3) 1\n', _meta_info, b'\n\n'),
    'split list': ('train.txt', lambda t, o: b'a/x.png\n', _split_list, b'a/zzz.png\n'),
}


def corruptions(valid, wrong_type, others):
    """(label, bytes, or a callable making the path unreadable) for one reader."""
    out = [('truncated', valid[:len(valid) // 2]), ('empty', b''), ('text', b'this is not that kind of file\n'),
           ('binary garbage', os.urandom(64)), ('not UTF-8', b'\xff\xfe\x00name: \xc3\x28\n'),
           ('wrong type', wrong_type), ('directory', 'DIR'), ('symlink loop', 'LOOP'), ('missing', 'MISSING')]
    out += [(f'other schema: {name}', content) for name, content in others.items()]
    return out


def _place(path, content):
    if content == 'DIR':
        path.mkdir()
    elif content == 'LOOP':
        os.symlink(path.name, path)
    elif content != 'MISSING':
        path.write_bytes(content)


def test_every_reader_refuses_every_corrupt_file_in_one_line(base, tmp_path, capsys):
    root, opt = base
    (root / 'work').mkdir(exist_ok=True)
    valid = {name: row[1](root, opt) for name, row in READERS.items()}
    bugs, count = [], 0
    for name, (file_name, _, read, wrong_type) in READERS.items():
        cases = [('valid', valid[name])] + corruptions(valid[name], wrong_type,
                                                        {n: v for n, v in valid.items() if n != name})
        for i, (label, content) in enumerate(cases):
            folder = tmp_path / f'{name.replace(" ", "_")}{i}'
            folder.mkdir()
            _place(folder / file_name, content)
            result = _outcome(lambda: read(root, opt, folder / file_name))
            count += 1
            if label == 'valid' and result != 'accepted':
                bugs.append(f'{name}: the valid file is refused: {result}')
            elif result not in ('accepted', 'refused'):
                bugs.append(f'{name} ({label}): {result}')
            assert not os.listdir(root / 'work')
    capsys.readouterr()
    with capsys.disabled():
        print(f'\n{count} generated reader cases ({len(READERS)} readers)')
    assert not bugs, '\n'.join(bugs)
    assert count >= len(READERS) * 10


#: values a number given on a command line can take that break arithmetic
_SPECIAL_NUMBERS = (math.nan, math.inf, -math.inf, -1.0, 0.0, 1.0, 1e308)


def test_split_ratios_of_every_special_value_are_accepted_or_one_line():
    """``datasets_prep/split_dataset.py --ratios A B C``: every triple of special values (343 cases) either
    splits every file once or is refused in one line."""
    import itertools

    from segsr_basicsr.data.prep import stratified_split
    classes = {'a': [f'a/{i}.png' for i in range(7)], 'b': [f'b/{i}.png' for i in range(3)]}
    bugs, count = [], 0
    for ratios in itertools.product(_SPECIAL_NUMBERS, repeat=3):
        count += 1
        out = {}
        result = _outcome(lambda: out.update(stratified_split(classes, ratios, 0)))
        if result == 'accepted' and sorted(sum(out.values(), [])) != sorted(sum(classes.values(), [])):
            bugs.append(f'{ratios}: files lost or repeated: {out}')
        elif result not in ('accepted', 'refused'):
            bugs.append(f'{ratios}: {result}')
    assert count == 343 and not bugs, '\n'.join(bugs)
