"""Training that survives a cluster: stop on a signal and resume bit for bit, the best network kept, bounded disk.

Subprocess runs of the tiny network; signals are sent by the test-only hooks of tests/fault_injection at a
chosen point (mid-iteration, during validation, during a periodic save, twice in a row, on one torchrun rank).
"""
import signal

import pytest
import torch

from segsr_basicsr.training.stop import STOP_EXIT_CODE
from train_opts import exp_logs, losses, run_train, train_opt, write_opt, write_pairs

KW = dict(total_iter=10, save_freq=4, val_freq=2)


def _weights(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def _same(a, b):
    keys = [k for k in a if k.startswith('params')]
    return keys and all(torch.equal(a[k][n], b[k][n]) for k in keys for n in a[k])


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """The uninterrupted run every stopped-and-resumed run must equal."""
    root = tmp_path_factory.mktemp('cluster')
    write_pairs(root / 'data', n=4)
    run_train(root, write_opt(root / 'ref.yml', train_opt(root / 'data', name='ref', **KW)))
    exp = root / 'experiments' / 'ref'
    return root, losses(exp_logs(root, 'ref')), _weights(exp / 'models' / 'net_g_latest.pth')


# (signal, where, times, the iteration the stop saves): one run, stopped four times, resumed after each
STOPS = [
    ('SIGTERM', 'step:2', 1, 2),          # mid-iteration: the step finishes, then iteration 2 is saved
    ('SIGUSR1', 'validation:4', 1, 5),    # during validation: the next step completes, then it stops
    ('SIGTERM', 'save:net_g_8.pth', 1, 9),  # during a periodic save: that save completes untouched
    ('SIGINT', 'step:10', 2, 10),         # twice in a row: one stop, one save (the last iteration)
]


def _last_best(log):
    """(value, iter) of BasicSR's last ``# psnr: ... Best: <value> @ <iter> iter`` line."""
    import re
    value, it = re.findall(r'Best: ([0-9.]+) @ (\d+) iter', log)[-1]
    return float(value), int(it)


def test_signals_save_the_iteration_reached_and_resumes_equal_an_uninterrupted_run(reference):
    """The table of docs/training.md: each stop exits 75 with that iteration saved; after four stops and four
    resumes the losses and final weights equal the uninterrupted run's, bit for bit. net_g_best.pth follows
    the validations and a resumed run knows the best so far."""
    root, ref_losses, ref_weights = reference
    opt = write_opt(root / 'stops.yml', train_opt(root / 'data', name='stops', **KW))
    exp = root / 'experiments' / 'stops'
    best_path = exp / 'models' / 'net_g_best.pth'
    for k, (sig, where, times, saved) in enumerate(STOPS):
        env = {'SEGSR_TEST_SIGNAL': sig, 'SEGSR_TEST_SIGNAL_AT': where, 'SEGSR_TEST_SIGNAL_COUNT': times}
        proc = run_train(root, opt, *(['--auto_resume'] if k else []), check=False, extra_env=env)
        assert proc.returncode == STOP_EXIT_CODE, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert (exp / 'models' / f'net_g_{saved}.pth').is_file() and (exp / 'training_states' / f'{saved}.state').is_file()
        assert not (exp / 'models' / 'net_g_latest.pth').exists() and proc.stderr.count(f'{sig} received') == 1
        log = exp_logs(root, 'stops')
        assert f'Stopped by {sig} at iter: {saved}, l_pix: ' in log
        if k == 1:  # the best so far, then one no later run can beat, at iteration 4: it must survive the resumes
            best = torch.load(best_path, map_location='cpu', weights_only=True)
            assert (best['segsr_best']['value'], best['segsr_best']['iter']) == pytest.approx(_last_best(log), 1e-3)
            assert best['segsr_best']['metric'] == 'psnr' and 'params_ema' in best
            best['segsr_best'].update(value=99.0, iter=4)
            torch.save(best, best_path)
    run_train(root, opt, '--auto_resume')
    log = exp_logs(root, 'stops')
    assert [f'iter: {s}.' in log for *_, s in STOPS] == [True] * len(STOPS)  # resumed from each saved iteration
    logged = losses(log)
    assert sorted(logged) == list(range(1, 11)) and all(ref_losses[i] == v for i, v in logged.items())
    assert _same(_weights(exp / 'models' / 'net_g_latest.pth'), ref_weights)
    kept = torch.load(best_path, map_location='cpu', weights_only=True)['segsr_best']
    assert (kept['value'], kept['iter']) == (99.0, 4) and _last_best(log) == (99.0, 4)
    from segsr_basicsr import load_model
    assert load_model(best_path, device='cpu').scale == 4  # segsr-infer / load_model take it like any checkpoint


def test_the_stop_signals_are_an_option(reference, tmp_path):
    """A signal not in train.stop_signals keeps its default action (SIGUSR2's: terminate, nothing saved)."""
    root = reference[0]
    o = train_opt(root / 'data', name='only_term', **KW)
    o['train']['stop_signals'] = ['SIGTERM']
    opt = write_opt(root / 'only_term.yml', o)
    proc = run_train(root, opt, check=False, extra_env={'SEGSR_TEST_SIGNAL': 'SIGUSR2', 'SEGSR_TEST_SIGNAL_AT': 'step:3'})
    assert proc.returncode == -signal.SIGUSR2
    assert not (root / 'experiments' / 'only_term' / 'training_states' / '3.state').exists()


def _torchrun(cwd, *args, extra_env=None):
    import subprocess
    from pathlib import Path

    from train_opts import PYTHON, env
    cmd = [PYTHON, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           '--log-dir', str(Path(cwd) / 'torchrun_logs'), '--redirects', '3', *args]
    return subprocess.run(cmd, cwd=cwd, env=env(SEGSR_DIST_TIMEOUT=300, **(extra_env or {})), capture_output=True,
                          text=True, timeout=420)


def test_two_ranks_stop_together_when_rank_1_gets_the_signal(tmp_path):
    from test_ddp import rank_outputs
    write_pairs(tmp_path / 'data', n=4)
    kw = dict(total_iter=6, save_freq=3, batch=1)
    ref = write_opt(tmp_path / 'ref.yml', train_opt(tmp_path / 'data', name='ref', **kw))
    cut = write_opt(tmp_path / 'cut.yml', train_opt(tmp_path / 'data', name='cut', **kw))
    assert _torchrun(tmp_path, '-m', 'segsr_basicsr.train', '-opt', ref, '--launcher', 'pytorch').returncode == 0
    env = {'SEGSR_TEST_SIGNAL': 'SIGTERM', 'SEGSR_TEST_SIGNAL_AT': 'step:2', 'SEGSR_TEST_SIGNAL_RANK': '1'}
    proc = _torchrun(tmp_path, '-m', 'segsr_basicsr.train', '-opt', cut, '--launcher', 'pytorch', extra_env=env)
    outputs = rank_outputs(tmp_path)
    assert proc.returncode != 0 and 'SIGTERM received (rank 1)' in outputs[1], proc.stderr[-3000:]
    assert 'received' not in outputs[0] and 'Stopped by a signal on another rank at iter: 2,' in outputs[0] + \
        exp_logs(tmp_path, 'cut')
    exp = tmp_path / 'experiments' / 'cut'
    assert sorted(p.name for p in (exp / 'training_states').iterdir()) == ['2.state']  # written once, by rank 0
    proc = _torchrun(tmp_path, '-m', 'segsr_basicsr.train', '-opt', cut, '--auto_resume', '--launcher', 'pytorch')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert losses(exp_logs(tmp_path, 'cut')) == losses(exp_logs(tmp_path, 'ref'))
    assert _same(_weights(exp / 'models' / 'net_g_latest.pth'),
                 _weights(tmp_path / 'experiments' / 'ref' / 'models' / 'net_g_latest.pth'))


def test_keep_checkpoints_bounds_the_disk_and_resume_still_works(reference, tmp_path):
    root, ref_losses, ref_weights = reference
    o = train_opt(root / 'data', name='keep', **dict(KW, save_freq=1))
    o['logger']['keep_checkpoints'] = 2
    opt = write_opt(root / 'keep.yml', o)
    # killed (SIGKILL) while the rotation is under way: net_g_6.pth written to its temporary name
    proc = run_train(root, opt, check=False, extra_env={'SEGSR_TEST_SAVE_HOOK': 'kill:net_g_6.pth'})
    assert proc.returncode == -signal.SIGKILL
    exp = root / 'experiments' / 'keep'
    names = sorted(p.name for p in (exp / 'models').glob('net_g_*.pth'))
    assert names == ['net_g_4.pth', 'net_g_5.pth', 'net_g_best.pth'], names
    assert sorted(p.name for p in (exp / 'training_states').glob('*.state')) == ['4.state', '5.state']
    run_train(root, opt, '--auto_resume')
    names = sorted(p.name for p in (exp / 'models').glob('net_g_*.pth'))
    assert names == ['net_g_10.pth', 'net_g_9.pth', 'net_g_best.pth', 'net_g_latest.pth'], names
    assert sorted(p.name for p in (exp / 'training_states').glob('*.state')) == ['10.state', '9.state']
    assert _same(_weights(exp / 'models' / 'net_g_latest.pth'), ref_weights)
