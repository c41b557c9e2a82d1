"""``torchrun -m segsr_basicsr.train --launcher pytorch`` with 2 CPU processes (gloo), spawned DataLoader workers."""
import subprocess
from pathlib import Path

import torch

from train_opts import PYTHON, env, train_opt, write_opt, write_pairs


def torchrun(cwd, *args, nproc=2, timeout=420):
    cmd = [PYTHON, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}',
           '--log-dir', str(Path(cwd) / 'torchrun_logs'), '--redirects', '3', *args]
    return subprocess.run(cmd, cwd=cwd, env=env(SEGSR_DIST_TIMEOUT=300), capture_output=True, text=True,
                          timeout=timeout)


def rank_outputs(cwd):
    """{local_rank: stdout + stderr} of the last torchrun job in ``cwd``."""
    out = {}
    for f in sorted((Path(cwd) / 'torchrun_logs').rglob('*.log')):
        out[int(f.parent.name)] = out.get(int(f.parent.name), '') + f.read_text()
    return out


def test_two_process_cpu_training(tmp_path):
    write_pairs(tmp_path / 'data', n=4)
    opt = train_opt(tmp_path / 'data', name='ddp', total_iter=4, save_freq=2, val_freq=2, batch=1, workers=1)
    # num_worker_per_gpu 1: spawned DataLoader workers unpickle our registered dataset (so import the package,
    # whose compat layer must make basicsr importable there too)
    opt['datasets']['train'].update(type='SeGSRBicubicDataset', persistent_workers=True)  # spawn once per rank
    del opt['datasets']['train']['dataroot_lq']
    opt_path = write_opt(tmp_path / 'ddp.yml', opt)
    proc = torchrun(tmp_path, '-m', 'segsr_basicsr.train', '-opt', opt_path, '--launcher', 'pytorch')
    outputs = rank_outputs(tmp_path)
    assert proc.returncode == 0, f'{proc.stderr[-3000:]}\n' + '\n'.join(v[-3000:] for v in outputs.values())
    assert 'segsr-train: rank 0/2 finished' in outputs[0]
    assert 'segsr-train: rank 1/2 finished' in outputs[1]

    exp = tmp_path / 'experiments' / 'ddp'
    log = ''.join(p.read_text() for p in exp.glob('train_*.log'))
    assert 'World size (gpu number): 2' in log and 'iter:       4' in log
    assert log.count('Validation tiny_val') == 3  # iters 2 and 4 + final, rank 0 only; rank 1 waited
    assert sorted(p.name for p in (exp / 'training_states').iterdir()) == ['2.state', '4.state']
    state = torch.load(exp / 'training_states' / '4.state', weights_only=True)
    assert len(state['rng_states']) == 2  # both ranks' random streams, for an exact resume
    assert not torch.equal(state['rng_states'][0]['torch'], state['rng_states'][1]['torch'])
    weights = torch.load(exp / 'models' / 'net_g_latest.pth', weights_only=True)['params']
    assert not any(k.startswith('module.') for k in weights)
