"""Crash-safe training, exact resume, refusing code in option files / checkpoints, identical DDP replicas."""
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from segsr_basicsr.errors import CheckpointError
from segsr_basicsr.io.checkpoint import atomic_save, load_checkpoint
from segsr_basicsr.io.option_file import parse_override_value
from test_ddp import rank_outputs, torchrun
from tiny_configs import TINY_GUIDANCE, TINY_HAT
from train_opts import LOSS_LINE, SAVE_HOOK_ENV, exp_logs, losses, run_train, train_opt, write_opt, write_pairs

HOOK = SAVE_HOOK_ENV


def _all_checkpoints_load(exp):
    files = sorted((exp / 'models').glob('*.pth')) + sorted((exp / 'training_states').glob('*.state'))
    for f in files:
        load_checkpoint(f)  # raises on a truncated / partial file
    return [f.name for f in files]


def _weights(path):
    return torch.load(path, weights_only=True)


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k][n], b[k][n]) if torch.is_tensor(a[k][n]) else a[k][n] == b[k][n]
                                        for k in a for n in a[k])  # tensors, and the saved network_g options


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / 'net_g_2.pth'
    atomic_save({'params': {'w': torch.ones(3)}}, path)

    def broken_save(obj, f):
        f.write(b'PK\x03\x04 half a zip')
        raise OSError('disk full')

    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(OSError, match='disk full'):
        atomic_save({'params': {'w': torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)['params']['w'], torch.ones(3))
    assert os.listdir(tmp_path) == ['net_g_2.pth']  # no temp file left behind


def test_a_save_that_keeps_failing_stops_training_naming_the_file(tmp_path, monkeypatch):
    import time

    import segsr_basicsr.io.checkpoint as checkpoint
    calls = []

    def full_disk(obj, path):
        calls.append(path)
        raise RuntimeError('PytorchStreamWriter failed writing file data/0: file write failed')

    monkeypatch.setattr(checkpoint, 'atomic_save', full_disk)
    monkeypatch.setattr(time, 'sleep', lambda s: None)
    with pytest.raises(OSError, match=r'Cannot save .*net_g_4\.pth: PytorchStreamWriter.*checkpoints are intact'):
        checkpoint.save_with_retry({}, str(tmp_path / 'net_g_4.pth'))
    assert len(calls) == 3  # basicsr retried 3 times too, then silently went on without the checkpoint


def test_sigkill_while_saving_then_auto_resume_matches_uninterrupted_run(tmp_path):
    write_pairs(tmp_path / 'data', n=4)
    kw = dict(total_iter=8, save_freq=2, val_freq=4)  # tiny SeGSR_HAT has drop_path: uses the torch RNG
    ref = write_opt(tmp_path / 'ref.yml', train_opt(tmp_path / 'data', name='ref', **kw))
    crash = write_opt(tmp_path / 'crash.yml', train_opt(tmp_path / 'data', name='crash', **kw))
    run_train(tmp_path, ref)
    exp = tmp_path / 'experiments' / 'crash'

    # killed while net_g_4.pth is written: the 2-iteration checkpoint stays the newest complete one
    proc = run_train(tmp_path, crash, check=False, extra_env={HOOK: 'kill:net_g_4.pth'})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert _all_checkpoints_load(exp) == ['net_g_2.pth', '2.state']
    assert [p.name for p in (exp / 'models').iterdir() if p.name.endswith('.tmp')]  # the partial file is hidden
    # killed while 6.state is written (its net_g_6.pth is complete): resume must not use iteration 6
    proc = run_train(tmp_path, crash, '--auto_resume', check=False, extra_env={HOOK: 'kill:6.state'})
    assert proc.returncode == -signal.SIGKILL
    assert _all_checkpoints_load(exp) == ['net_g_2.pth', 'net_g_4.pth', 'net_g_6.pth', 'net_g_best.pth', '2.state',
                                          '4.state']  # best: validated at iteration 4
    # killed while the final net_g_latest.pth is written
    proc = run_train(tmp_path, crash, '--auto_resume', check=False, extra_env={HOOK: 'kill:net_g_latest.pth'})
    assert proc.returncode == -signal.SIGKILL
    assert '8.state' in _all_checkpoints_load(exp)
    run_train(tmp_path, crash, '--auto_resume')

    log = exp_logs(tmp_path, 'crash')
    assert 'Resuming training from epoch: 0, iter: 2.' in log and 'Resuming training from epoch: 1, iter: 4.' in log
    ref_losses = losses(exp_logs(tmp_path, 'ref'))
    assert sorted(ref_losses) == list(range(1, 9))
    # every logged step of every (killed or resumed) run equals the uninterrupted run's step
    logged = [(int(i), float(v)) for i, v in LOSS_LINE.findall(log)]
    assert {i for i, _ in logged} == set(range(1, 9)) and all(ref_losses[i] == v for i, v in logged), logged
    assert _same(_weights(exp / 'models' / 'net_g_latest.pth'),
                 _weights(tmp_path / 'experiments' / 'ref' / 'models' / 'net_g_latest.pth'))
    names = _all_checkpoints_load(exp)
    iters = (2, 4, 6, 8)
    assert names == [f'net_g_{i}.pth' for i in iters] + ['net_g_best.pth', 'net_g_latest.pth'] + \
        [f'{i}.state' for i in iters]
    assert not [p for p in exp.rglob('*.tmp')]  # temp files of the killed runs were cleaned up


def test_sigkill_at_random_moments_never_leaves_a_broken_checkpoint(tmp_path):
    """Saving after every step, killed from outside at random times (often inside torch.save), then resumed."""
    import random
    import time

    from train_opts import PYTHON, env
    write_pairs(tmp_path / 'data', n=4)
    opt_path = write_opt(tmp_path / 'o.yml', train_opt(tmp_path / 'data', name='random_kill', total_iter=14,
                                                       save_freq=1))
    exp = tmp_path / 'experiments' / 'random_kill'
    rng = random.Random(1234)
    for attempt in range(3):
        args = [PYTHON, '-m', 'segsr_basicsr.train', '-opt', opt_path] + (['--auto_resume'] if attempt else [])
        proc = subprocess.Popen(args, cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        before = len(list((exp / 'training_states').glob('*.state'))) if exp.exists() else 0
        while time.time() < deadline and proc.poll() is None:  # wait for this run's first save
            if exp.exists() and len(list((exp / 'training_states').glob('*.state'))) > before:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _all_checkpoints_load(exp)  # whatever moment the kill hit, every visible checkpoint is complete
    run_train(tmp_path, opt_path, '--auto_resume')
    names = _all_checkpoints_load(exp)
    assert '14.state' in names and 'net_g_latest.pth' in names
    assert not list(exp.rglob('*.tmp'))


class _Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint / option file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


def test_pickled_code_in_a_checkpoint_is_refused(tmp_path):
    marker = tmp_path / 'PWNED'
    evil = tmp_path / 'evil.pth'
    torch.save({'params': {'w': torch.ones(1)}, 'extra': _Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match=r'Refusing to load .*evil\.pth'):
        load_checkpoint(evil)
    assert not marker.exists()

    # as pretrain_network_g through the training entry point: refused before any training, nothing executed
    write_pairs(tmp_path / 'data', n=4)
    opt = train_opt(tmp_path / 'data', name='evil_pretrain', total_iter=2)
    opt['path']['pretrain_network_g'] = str(evil)
    proc = run_train(tmp_path, write_opt(tmp_path / 'evil.yml', opt), check=False)
    assert proc.returncode == 2 and 'evil.pth' in proc.stderr and 'Refusing to load' in proc.stderr
    assert not marker.exists()
    assert not (tmp_path / 'experiments' / 'evil_pretrain' / 'models' / 'net_g_latest.pth').exists()


def test_auto_resume_skips_truncated_states_and_states_carrying_code(tmp_path):
    marker = tmp_path / 'PWNED'
    write_pairs(tmp_path / 'data', n=4)
    opt_path = write_opt(tmp_path / 'o.yml', train_opt(tmp_path / 'data', name='planted', total_iter=4, save_freq=2))
    run_train(tmp_path, opt_path)
    exp = tmp_path / 'experiments' / 'planted'
    shutil.copy(exp / 'models' / 'net_g_4.pth', exp / 'models' / 'net_g_100.pth')
    # newest by name, with a code payload
    torch.save({'iter': 100, 'epoch': 50, 'optimizers': [], 'schedulers': [], 'x': _Payload(marker)},
               exp / 'training_states' / '100.state')
    # a truncated state, as a non-atomic writer (plain basicsr) leaves it when killed
    shutil.copy(exp / 'models' / 'net_g_4.pth', exp / 'models' / 'net_g_50.pth')
    data = (exp / 'training_states' / '4.state').read_bytes()
    (exp / 'training_states' / '50.state').write_bytes(data[:len(data) // 2])
    proc = run_train(tmp_path, opt_path, '--auto_resume', '--force_yml', 'train:total_iter=6')
    assert not marker.exists()
    assert '100.state' in proc.stdout and 'Refusing to load' in proc.stdout
    assert '50.state' in proc.stdout and 'Cannot read checkpoint' in proc.stdout
    assert 'Resuming training from epoch: 1, iter: 4.' in exp_logs(tmp_path, 'planted')
    assert (exp / 'training_states' / '6.state').is_file()


def test_python_tag_in_option_file_is_refused_and_nothing_ran(tmp_path):
    marker = tmp_path / 'PWNED'
    write_pairs(tmp_path / 'data', n=4)
    text = Path(write_opt(tmp_path / 'ok.yml', train_opt(tmp_path / 'data', name='tagged', total_iter=2))).read_text()
    evil = tmp_path / 'tagged.yml'
    evil.write_text(text + f'evil: !!python/object/apply:os.system ["touch {marker}"]\n')
    proc = run_train(tmp_path, evil, check=False)
    assert proc.returncode == 2
    assert 'tagged.yml' in proc.stderr and 'python/object/apply' in proc.stderr and 'never executed' in proc.stderr
    assert not marker.exists() and not (tmp_path / 'experiments').exists()

    # basicsr's own parser, as our entry points patch it, refuses it too (code that drives basicsr's train
    # loop itself calls patch_train_loop() first, as segsr_basicsr.train does)
    import sys
    import yaml

    import basicsr.utils.options
    from segsr_basicsr.training.pipeline import patch_train_loop
    patch_train_loop()
    parse_options = basicsr.utils.options.parse_options
    saved = sys.argv
    sys.argv = ['train', '-opt', str(evil)]
    try:
        with pytest.raises(yaml.constructor.ConstructorError):
            parse_options(str(tmp_path), is_train=True)
    finally:
        sys.argv = saved
    assert not marker.exists()


def test_force_yml_is_never_evaluated(tmp_path):
    marker = tmp_path / 'PWNED'
    value = parse_override_value(f"[__import__('os').system('touch {marker}')]")
    assert value == [f"__import__('os').system('touch {marker}')"] and not marker.exists()
    write_pairs(tmp_path / 'data', n=4)
    opt_path = write_opt(tmp_path / 'o.yml', train_opt(tmp_path / 'data', name='inject', total_iter=2))
    entry = f'name"]=0;open("{marker}","w");x=["a=1'  # basicsr would exec: opt["name"]=0;open(...)...
    proc = run_train(tmp_path, opt_path, '--force_yml', entry, check=False)
    assert proc.returncode == 2 and 'is not an option key' in proc.stderr
    assert not marker.exists() and not (tmp_path / 'experiments').exists()


DRIVER = '''
import os, sys
import torch, torch.distributed as dist
import segsr_basicsr
from basicsr.models.sr_model import SRModel

out = sys.argv.pop(1)
orig_save = SRModel.save


def save(self, epoch, current_iter):  # every rank dumps its replica next to the real checkpoint
    net = self.get_bare_model(self.net_g)
    torch.save({k: v.detach().clone() for k, v in net.state_dict().items()},
               os.path.join(out, f'rank{dist.get_rank()}_iter{current_iter}.pt'))
    return orig_save(self, epoch, current_iter)


SRModel.save = save
from segsr_basicsr.train import main
main()
'''


def test_ddp_two_cpu_ranks_keep_identical_segsr_hat_guided_weights(tmp_path):
    write_pairs(tmp_path / 'data', n=4, gt_size=32)
    net = dict(type='SeGSR_HAT', **TINY_HAT, guidance=dict(TINY_GUIDANCE))
    opt = train_opt(tmp_path / 'data', name='ddp_guided', total_iter=3, save_freq=1, batch=1, network=net,
                    model_type='SeGSRModel', gt_size=32)
    assert 'find_unused_parameters' not in opt
    opt_path = write_opt(tmp_path / 'g.yml', opt)
    (tmp_path / 'driver.py').write_text(DRIVER)
    (tmp_path / 'dump').mkdir()
    proc = torchrun(tmp_path, str(tmp_path / 'driver.py'), str(tmp_path / 'dump'), '-opt', opt_path,
                    '--launcher', 'pytorch')
    outputs = rank_outputs(tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:] + '\n'.join(v[-4000:] for v in outputs.values())
    for it in (3, -1):
        w0 = torch.load(tmp_path / 'dump' / f'rank0_iter{it}.pt', weights_only=True)
        w1 = torch.load(tmp_path / 'dump' / f'rank1_iter{it}.pt', weights_only=True)
        assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0), it
    w_first = torch.load(tmp_path / 'dump' / 'rank0_iter1.pt', weights_only=True)
    assert not all(torch.equal(w_first[k], w0[k]) for k in w0)  # the replicas did train, in lockstep
    saved = torch.load(tmp_path / 'experiments' / 'ddp_guided' / 'models' / 'net_g_3.pth', weights_only=True)['params']
    assert all(torch.equal(saved[k], w0[k]) for k in saved)
    lora = [k for k in saved if 'lora' in k.lower()]
    assert lora, 'guidance LoRA weights are part of the trained replicas'


def test_ddp_resume_mid_epoch_continues_every_ranks_sequence(tmp_path):
    """2 CPU ranks: stop at iteration 3 (mid-epoch), resume to 6 == an uninterrupted 6-iteration run, bit for bit."""
    write_pairs(tmp_path / 'data', n=4)
    kw = dict(save_freq=3, batch=1)
    ref = write_opt(tmp_path / 'ref.yml', train_opt(tmp_path / 'data', name='ref', total_iter=6, **kw))
    cut = write_opt(tmp_path / 'cut.yml', train_opt(tmp_path / 'data', name='cut', total_iter=3, **kw))
    for args in ([ref], [cut], [cut, '--auto_resume', '--force_yml', 'train:total_iter=6']):
        proc = torchrun(tmp_path, '-m', 'segsr_basicsr.train', '-opt', *args, '--launcher', 'pytorch')
        assert proc.returncode == 0, proc.stderr[-2000:] + '\n'.join(v[-3000:] for v in rank_outputs(tmp_path).values())
    log = exp_logs(tmp_path, 'cut')
    assert 'Resuming training from epoch: 1, iter: 3.' in log
    assert 'skipping the 1 batches of epoch 1' in log
    assert losses(log) == losses(exp_logs(tmp_path, 'ref'))  # rank-averaged losses: both ranks matched
    assert sorted(losses(log)) == list(range(1, 7))
    assert _same(_weights(tmp_path / 'experiments' / 'cut' / 'models' / 'net_g_latest.pth'),
                 _weights(tmp_path / 'experiments' / 'ref' / 'models' / 'net_g_latest.pth'))


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from segsr_basicsr.io.checkpoint import get_rng_states, set_rng_states
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    atomic_save({'rng_states': [get_rng_states()]}, tmp_path / '1.state')
    first = (random.random(), np.random.rand(), np.random.randn(), torch.rand(2))
    set_rng_states(load_checkpoint(tmp_path / '1.state')['rng_states'][0])  # weights_only can read it back
    again = (random.random(), np.random.rand(), np.random.randn(), torch.rand(2))
    assert first[:3] == again[:3] and torch.equal(first[3], again[3])
