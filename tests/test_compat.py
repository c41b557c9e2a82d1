"""The BasicSR compatibility layer: what it fixes, and that it leaves working basicsr code paths alone."""
import datetime
import importlib
import subprocess
import textwrap

import numpy as np
import pytest
import torch

import segsr_basicsr  # noqa: F401
from basicsr.models.base_model import BaseModel
from segsr_basicsr import compat
from segsr_basicsr.training import pipeline as train_loop
from segsr_basicsr.models.segsr_model import SeGSRModel
from train_opts import PYTHON, env


def _run(code, **extra_env):
    return subprocess.run([PYTHON, '-c', textwrap.dedent(code)], capture_output=True, text=True, env=env(**extra_env),
                          timeout=120)


@pytest.fixture(autouse=True, scope='module')
def _train_loop_patched():
    """These tests exercise what the entry points install before BasicSR's train loop runs."""
    train_loop.patch_train_loop()


class ModelProbe(SeGSRModel):
    """SeGSRModel's overrides on a bare BaseModel (no network built)."""
    __init__ = BaseModel.__init__


IMPORT_SCOPE = """
import segsr_basicsr  # registers everything (and must not change BasicSR)
import basicsr.train, basicsr.test, basicsr.utils.options, basicsr.utils.dist_util
from basicsr.models.base_model import BaseModel
from basicsr.models.sr_model import SRModel
from basicsr.utils.registry import Registry
from segsr_basicsr.models.segsr_model import SeGSRModel
methods = {n: getattr(BaseModel, n) for n in vars(BaseModel) if callable(getattr(BaseModel, n))}
assert all(m.__module__ == 'basicsr.models.base_model' and m.__qualname__.startswith('BaseModel.')
           for m in methods.values()), [n for n, m in methods.items() if m.__module__ != 'basicsr.models.base_model']
assert SRModel.save_network is BaseModel.save_network and SRModel.load_network is BaseModel.load_network
assert SeGSRModel.save_network is not BaseModel.save_network  # ours live in our class
funcs = [basicsr.train.load_resume_state, basicsr.train.create_train_val_dataloader, basicsr.train.parse_options,
         basicsr.test.parse_options, basicsr.utils.options.ordered_yaml, basicsr.utils.dist_util._init_dist_pytorch,
         basicsr.utils.dist_util._init_dist_slurm, Registry._do_register, Registry.register]
assert all(f.__module__.startswith('basicsr.') and not hasattr(f, '__segsr_original__') for f in funcs), funcs
assert basicsr.train.EnlargedSampler.__module__ == 'basicsr.data.data_sampler'
from segsr_basicsr.training.pipeline import patch_train_loop
patch_train_loop()  # what segsr_basicsr.train / .test do when they run
assert {n: getattr(BaseModel, n) for n in methods} == methods, 'BaseModel changed by the entry-point patches'
assert basicsr.train.load_resume_state.__segsr_original__ is funcs[0]
print('SCOPE-OK')
"""


def test_import_changes_no_basicsr_behaviour_and_entry_points_patch_only_the_train_loop():
    """Importing the package next to a plain BasicSR SRModel leaves BaseModel's methods BasicSR's own."""
    proc = _run(IMPORT_SCOPE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'SCOPE-OK' in proc.stdout


def test_train_loop_patches_are_idempotent():
    import basicsr.train
    patched = basicsr.train.load_resume_state
    base = train_loop.original(patched)
    assert base is not patched and base.__module__ == 'basicsr.train'
    importlib.reload(compat)  # a second patch_train_loop() must wrap basicsr's function again, never our wrapper
    train_loop.patch_train_loop()
    assert train_loop.original(basicsr.train.load_resume_state) is base
    assert basicsr.train.parse_options is importlib.import_module('basicsr.utils.options').parse_options


def test_python312_without_setuptools_says_what_to_install():
    """Simulate Python 3.12 without setuptools: the import names the missing package, not a basicsr line."""
    proc = _run('''
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('distutils', 'setuptools', '_distutils_hack'):
                    raise ImportError(f'blocked {name}')
        for m in [m for m in sys.modules if m.split('.')[0] in ('distutils', 'setuptools', '_distutils_hack')]:
            del sys.modules[m]
        sys.meta_path.insert(0, Block())
        import segsr_basicsr
    ''')
    assert proc.returncode != 0 and 'pip install setuptools' in proc.stderr, proc.stderr[-3000:]


def test_init_dist_pytorch_uses_gloo_on_cpu_with_long_timeout(monkeypatch):
    import basicsr.utils.dist_util as dist_util
    calls = []
    monkeypatch.setattr(torch.distributed, 'init_process_group', lambda **kw: calls.append(kw))
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.delenv(train_loop.DIST_TIMEOUT_ENV, raising=False)
    dist_util._init_dist_pytorch('nccl')  # what basicsr's init_dist('pytorch') passes
    assert calls[-1] == dict(backend='gloo', timeout=datetime.timedelta(hours=3))
    monkeypatch.setenv(train_loop.DIST_TIMEOUT_ENV, '90')
    dist_util._init_dist_pytorch('nccl')
    assert calls[-1]['timeout'] == datetime.timedelta(seconds=90)
    monkeypatch.setenv(train_loop.DIST_TIMEOUT_ENV, 'soon')
    with pytest.raises(ValueError, match='SEGSR_DIST_TIMEOUT'):
        dist_util._init_dist_pytorch('nccl')


def test_init_dist_pytorch_on_cuda_is_basicsrs_own_nccl_path(monkeypatch):
    """With CUDA, basicsr's code runs unchanged (set_device + nccl); we only add the timeout."""
    import basicsr.utils.dist_util as dist_util
    calls, devices = [], []
    monkeypatch.setattr(torch.distributed, 'init_process_group', lambda **kw: calls.append(kw))
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 4)
    monkeypatch.setattr(torch.cuda, 'set_device', devices.append)
    monkeypatch.setenv('RANK', '5')
    monkeypatch.setenv(train_loop.DIST_TIMEOUT_ENV, '7200')
    dist_util._init_dist_pytorch('nccl')
    assert devices == [1] and calls == [dict(backend='nccl', timeout=datetime.timedelta(hours=2))]


def test_model_to_device_cpu_ddp_has_no_device_ids(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    net = torch.nn.Conv2d(1, 1, 1)
    assert ModelProbe(dict(num_gpu=0, is_train=True, dist=False)).model_to_device(net) is net  # basicsr's path
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/pg', rank=0, world_size=1)
    try:
        wrapped = ModelProbe(dict(num_gpu=0, is_train=True, dist=True)).model_to_device(net)
        assert isinstance(wrapped, DistributedDataParallel) and wrapped.device_ids is None
        assert wrapped.find_unused_parameters is False
        wrapped(torch.ones(1, 1, 2, 2)).sum().backward()  # a CPU DDP step works
    finally:
        dist.destroy_process_group()


def test_split_argv_force_yml_and_local_rank():
    argv, overrides = train_loop.split_argv(
        ['prog', '-opt', 'x.yml', '--local-rank=1', '--force_yml', 'train:total_iter=9', 'name=b', '--debug'])
    assert argv == ['prog', '-opt', 'x.yml', '--local_rank=1', '--debug']
    assert overrides == ['train:total_iter=9', 'name=b']


def test_option_loader_is_safe():
    import yaml
    from basicsr.utils.options import ordered_yaml
    loader = ordered_yaml()[0]
    assert list(yaml.load('b: 1\na: !!float 2e-4\n', Loader=loader).items()) == [('b', 1), ('a', 2e-4)]
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.load('x: !!python/object/apply:os.system ["echo pwned"]\n', Loader=loader)


def test_registry_reimport_replaces_same_definition_but_refuses_a_clash():
    from basicsr.utils.registry import Registry
    from segsr_basicsr.registry import register
    reg = Registry('probe')

    def make():
        class Thing:
            pass
        return Thing

    first, again = make(), make()  # same module + qualname: a re-import
    register(reg)(first)
    register(reg)(again)
    assert reg.get('Thing') is again

    other = type('Thing', (), {'__module__': 'someone.else'})
    reg._obj_map.clear()
    reg.register(other)  # someone else took the name first
    with pytest.raises(KeyError, match=r'already registered .* by someone\.else; test_compat cannot'):
        register(reg)(make())


def test_numpy2_metric_and_image_paths():
    """The basicsr helpers our validation uses run under numpy 2 (no np.float / np.int aliases hit)."""
    from basicsr.metrics import calculate_niqe, calculate_psnr, calculate_ssim
    from basicsr.utils import img2tensor, tensor2img
    from basicsr.utils.matlab_functions import imresize
    assert np.__version__  # whichever numpy the venv has; this repo runs numpy 2.x
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:192, 0:192]
    img = np.clip(np.stack([xx, yy, xx + yy], -1) * 0.6 + rng.normal(0, 10, (192, 192, 3)), 0, 255).astype(np.uint8)
    noisy = np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)
    psnr = calculate_psnr(img, noisy, crop_border=4, test_y_channel=True)
    assert 30 < psnr < 50
    assert 0.5 < calculate_ssim(img, noisy, crop_border=4, test_y_channel=True) < 1
    assert np.isfinite(calculate_niqe(img, crop_border=0))
    assert imresize(img / 255., 0.25).shape == (48, 48, 3)
    assert tensor2img(img2tensor(img / 255., bgr2rgb=True, float32=True), rgb2bgr=True).dtype == np.uint8


def test_validation_is_followed_by_a_barrier_in_distributed_runs(tmp_path, monkeypatch):
    """Rank 0 validates alone (basicsr); every rank then meets at a barrier instead of inside the next step."""
    import torch.distributed as dist
    seen = []
    monkeypatch.setattr(ModelProbe, 'dist_validation', lambda self, *a: seen.append('validate'), raising=False)
    monkeypatch.setattr(ModelProbe, 'nondist_validation', lambda self, *a: seen.append('validate'), raising=False)
    monkeypatch.setattr(dist, 'barrier', lambda *a, **k: seen.append('barrier'))
    ModelProbe(dict(num_gpu=0, is_train=False, dist=False)).validation(None, 1, None)
    assert seen == ['validate']  # single process: basicsr's behaviour, no collective
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/pg', rank=0, world_size=1)
    try:
        seen.clear()
        ModelProbe(dict(num_gpu=0, is_train=False, dist=True)).validation(None, 1, None)
        assert seen == ['validate', 'barrier']
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize('cuda', [False, True])
def test_init_dist_slurm_cpu_and_cuda_with_long_timeout(monkeypatch, cuda):
    import subprocess as sp

    import basicsr.utils.dist_util as dist_util
    calls, devices = [], []
    monkeypatch.setattr(torch.distributed, 'init_process_group', lambda **kw: calls.append(kw))
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 4 if cuda else 0)
    monkeypatch.setattr(torch.cuda, 'set_device', devices.append)
    monkeypatch.setattr(sp, 'getoutput', lambda cmd: 'node07' if 'scontrol show hostname node[07-08]' in cmd else '?')
    for key, value in dict(SLURM_PROCID='6', SLURM_NTASKS='8', SLURM_NODELIST='node[07-08]', SLURM_LOCALID='2').items():
        monkeypatch.setenv(key, value)
    for key in ('MASTER_PORT', 'MASTER_ADDR', 'WORLD_SIZE', 'RANK', 'LOCAL_RANK', train_loop.DIST_TIMEOUT_ENV):
        monkeypatch.setenv(key, 'x')  # recorded as absent before, so the values the SLURM init sets are undone
        monkeypatch.delenv(key)
    dist_util._init_dist_slurm('nccl', port=29611)  # what init_dist('slurm', **opt['dist_params']) calls
    assert calls == [dict(backend='nccl' if cuda else 'gloo', timeout=datetime.timedelta(hours=3))]
    assert devices == ([2] if cuda else [])
    import os
    assert (os.environ['MASTER_ADDR'], os.environ['MASTER_PORT'], os.environ['WORLD_SIZE'], os.environ['RANK'],
            os.environ['LOCAL_RANK']) == ('node07', '29611', '8', '6', '2')
