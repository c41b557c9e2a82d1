"""The demo's figures do not depend on the machine: CPU training results change with torch's thread count (the
order of its reductions) and with the kernels torch, oneDNN and MKL pick for the CPU (AVX-512 or AVX2), so an
option file can pin ``num_threads`` and ``cpu_kernels``, and the demo files do (docs/limits.md)."""
import hashlib
import os
import subprocess

import pytest
import torch
import yaml

from segsr_basicsr.errors import OptionError
from segsr_basicsr.options import check_cpu_options
from segsr_basicsr.training import cpu_arithmetic
from segsr_basicsr.training.cpu_arithmetic import AVX2_ENV, cpu_has_avx2, pin_cpu_arithmetic
from train_opts import PYTHON, REPO, run_train, write_opt

ITERS = 10
NEEDS_AVX2 = pytest.mark.skipif(not cpu_has_avx2(), reason='cpu_kernels: avx2 needs an x86-64 CPU with AVX2')


@pytest.fixture(scope='module')
def demo_data(tmp_path_factory):
    out = tmp_path_factory.mktemp('demo') / 'demo_data'
    subprocess.run([PYTHON, str(REPO / 'datasets_prep' / 'make_demo_dataset.py'), '--out', str(out)], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope='module')
def train(tmp_path_factory, demo_data):
    """train(omp, num_threads, cpu_kernels=None, env=None): the digest of the weights after ITERS iterations of
    the demo's own training (cached: the same settings train once per module)."""
    root, done = tmp_path_factory.mktemp('runs'), {}

    def run(omp, num_threads, cpu_kernels=None, env=None):
        key = (omp, num_threads, cpu_kernels, tuple(sorted((env or {}).items())))
        if key not in done:
            cwd = root / f'run{len(done)}'
            cwd.mkdir()
            opt = yaml.safe_load((REPO / 'options' / 'demo' / 'train_SeGSR_HAT_demo_x4.yml').read_text())
            opt['datasets'] = {'train': dict(opt['datasets']['train'], dataroot_gt=str(demo_data / 'train' / 'HR'))}
            opt.pop('val', None)
            opt['train']['total_iter'] = ITERS
            opt['logger'].update(print_freq=ITERS, save_checkpoint_freq=ITERS, use_tb_logger=False)
            opt['num_threads'], opt['cpu_kernels'] = num_threads, cpu_kernels
            run_train(cwd, write_opt(cwd / 'opt.yml', opt),
                      extra_env={'OMP_NUM_THREADS': omp, 'MKL_NUM_THREADS': omp, **(env or {})})
            sd = torch.load(cwd / 'experiments' / opt['name'] / 'models' / f'net_g_{ITERS}.pth', map_location='cpu',
                            weights_only=True)
            h = hashlib.sha256()
            for k in sorted(sd['params']):
                h.update(sd['params'][k].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            done[key] = h.hexdigest()
        return done[key]
    return run


def test_a_pinned_thread_count_gives_the_same_weights_whatever_the_environment_says(train):
    assert train('1', None) != train('2', None), 'the thread count no longer changes training here: proves nothing'
    assert train('1', 2) == train('2', 2)


@NEEDS_AVX2
def test_cpu_kernels_avx2_in_the_option_file_equals_the_avx2_environment_set_before_start(train):
    """The option takes effect although it is read after torch is imported: the three libraries had not chosen
    their kernels yet. Set from outside, the same variables give the same weights."""
    pinned = train('2', 2, 'avx2')
    assert pinned == train('2', 2, None, AVX2_ENV)
    if torch.backends.cpu.get_cpu_capability() != 'AVX2':  # an AVX-512 machine: the pin must change something
        assert pinned != train('2', 2), 'cpu_kernels: avx2 gave the native weights: the pin did not apply'


def test_the_demo_option_files_pin_threads_and_kernels():
    for name in ('train', 'test'):
        opt = yaml.safe_load((REPO / 'options' / 'demo' / f'{name}_SeGSR_HAT_demo_x4.yml').read_text())
        assert (opt['num_threads'], opt['cpu_kernels']) == (2, 'avx2'), name


@pytest.fixture
def environ(monkeypatch):
    """A private os.environ for one test (pin_cpu_arithmetic writes to it)."""
    env = {k: v for k, v in os.environ.items() if k not in AVX2_ENV}
    monkeypatch.setattr(os, 'environ', env)
    return env


def test_a_conflicting_environment_variable_is_refused_naming_it(environ):
    if not cpu_has_avx2():
        pytest.skip('no AVX2: the option only warns here')
    environ['MKL_CBWR'] = 'AVX512'
    with pytest.raises(OptionError, match=r'needs MKL_CBWR=COMPATIBLE, but the environment sets MKL_CBWR=AVX512'):
        pin_cpu_arithmetic({'cpu_kernels': 'avx2'})


@NEEDS_AVX2
def test_too_late_is_refused_with_the_variables_to_export(environ):
    """In this process torch chose its kernels long ago (at the first computation of the test session)."""
    if torch.backends.cpu.get_cpu_capability() == 'AVX2':
        pytest.skip('this CPU runs the AVX2 kernels natively: nothing to refuse')
    with pytest.raises(OptionError, match='already runs its .* kernels.*ATEN_CPU_CAPABILITY=avx2 '
                                          'ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=COMPATIBLE'):
        pin_cpu_arithmetic({'cpu_kernels': 'avx2'})


def test_without_avx2_the_run_goes_on_with_a_warning(environ, monkeypatch):
    monkeypatch.setattr(cpu_arithmetic, 'cpu_has_avx2', lambda: False)
    warnings = []
    pin_cpu_arithmetic({'cpu_kernels': 'avx2'}, warn=warnings.append)
    assert len(warnings) == 1 and 'has no AVX2' in warnings[0]
    assert not set(AVX2_ENV) & set(environ)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / 'cpuinfo'
    info.write_text('processor\t: 0\nflags\t\t: fpu sse2 avx fma\n')
    assert not cpu_has_avx2(str(info))
    info.write_text('processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n')
    assert cpu_has_avx2(str(info)) == (os.uname().machine in ('x86_64', 'AMD64'))


def test_bad_values_are_refused_before_anything_is_applied():
    with pytest.raises(OptionError, match=r"opt.yml: cpu_kernels must be one of native, avx2, got 'avx'"):
        check_cpu_options({'cpu_kernels': 'avx'}, 'opt.yml')
    with pytest.raises(OptionError, match=r"opt.yml: 'num_threads' must be >= 1, got 0"):
        check_cpu_options({'num_threads': 0}, 'opt.yml')
