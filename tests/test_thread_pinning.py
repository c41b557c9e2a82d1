"""The demo's figures do not depend on the machine: CPU training results change with torch's thread count (the
order of its reductions), so an option file can pin ``num_threads``, and the demo files do (docs/limits.md)."""
import hashlib
import subprocess

import pytest
import torch
import yaml

from train_opts import PYTHON, REPO, run_train, write_opt

ITERS = 10


@pytest.fixture(scope='module')
def demo_data(tmp_path_factory):
    out = tmp_path_factory.mktemp('demo') / 'demo_data'
    subprocess.run([PYTHON, str(REPO / 'datasets_prep' / 'make_demo_dataset.py'), '--out', str(out)], check=True,
                   capture_output=True)
    return out


def _train(root, tag, demo_data, omp, num_threads):
    """The demo's own training, ITERS iterations, under OMP_NUM_THREADS=omp; the digest of its weights."""
    cwd = root / tag
    cwd.mkdir()
    opt = yaml.safe_load((REPO / 'options' / 'demo' / 'train_SeGSR_HAT_demo_x4.yml').read_text())
    opt['datasets'] = {'train': dict(opt['datasets']['train'], dataroot_gt=str(demo_data / 'train' / 'HR'))}
    opt.pop('val', None)
    opt['train']['total_iter'] = ITERS
    opt['logger'].update(print_freq=ITERS, save_checkpoint_freq=ITERS, use_tb_logger=False)
    opt['num_threads'] = num_threads
    run_train(cwd, write_opt(cwd / 'opt.yml', opt), extra_env={'OMP_NUM_THREADS': omp, 'MKL_NUM_THREADS': omp})
    sd = torch.load(cwd / 'experiments' / opt['name'] / 'models' / f'net_g_{ITERS}.pth', map_location='cpu',
                    weights_only=True)
    h = hashlib.sha256()
    for k in sorted(sd['params']):
        h.update(sd['params'][k].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_a_pinned_thread_count_gives_the_same_weights_whatever_the_environment_says(tmp_path, demo_data):
    unpinned = {_train(tmp_path, f'free{omp}', demo_data, omp, None) for omp in ('1', '2')}
    assert len(unpinned) == 2, 'the thread count no longer changes training here: this test proves nothing'
    assert _train(tmp_path, 'pin1', demo_data, '1', 2) == _train(tmp_path, 'pin2', demo_data, '2', 2)


def test_the_demo_option_files_pin_the_thread_count():
    for name in ('train', 'test'):
        opt = yaml.safe_load((REPO / 'options' / 'demo' / f'{name}_SeGSR_HAT_demo_x4.yml').read_text())
        assert opt['num_threads'] == 2, name
