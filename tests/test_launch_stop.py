"""A scheduler's stop through torchrun: the signal goes to the launcher (as SLURM sends it to the job step),
torchrun forwards it to the ranks, they save and exit 75, and ``segsr_basicsr.launch`` exits 75 where bare
torchrun exits 1. docs/slurm_train.sh (shown in docs/training.md) is the job script the test runs.

Two ranks on CPU (gloo); the signals come from tests/fault_injection (``SEGSR_TEST_SIGNAL_TO``).
"""
import os
import subprocess
from pathlib import Path

import torch

from segsr_basicsr.training.stop import STOP_EXIT_CODE
from train_opts import PYTHON, REPO, env, exp_logs, losses, train_opt, write_opt, write_pairs

JOB_SCRIPT = REPO / 'docs' / 'slurm_train.sh'
LAUNCH = [PYTHON, '-m', 'segsr_basicsr.launch', '--standalone', '--nproc_per_node=2']


def _env(cwd, **extra):
    """The subprocesses import this checkout, find ``python`` (this interpreter) and a stand-in ``scontrol``
    that logs its arguments to ``<cwd>/scontrol.log``."""
    e = env(SEGSR_DIST_TIMEOUT=300, **extra)
    e['PYTHONPATH'] = os.pathsep.join(p for p in (str(REPO), e.get('PYTHONPATH')) if p)
    bin_dir = Path(cwd) / 'bin'
    if not bin_dir.is_dir():
        bin_dir.mkdir()
        (bin_dir / 'scontrol').write_text(f'#!/bin/sh\necho "$@" >> {Path(cwd) / "scontrol.log"}\n')
        (bin_dir / 'scontrol').chmod(0o755)
    e['PATH'] = os.pathsep.join([str(Path(PYTHON).parent), str(bin_dir), e.get('PATH', '')])
    return e


def _run(cmd, cwd, **extra):
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(cwd, **extra), capture_output=True, text=True,
                          timeout=300)


def _weights(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def test_the_job_script_in_the_docs_is_the_tested_one():
    text = (REPO / 'docs' / 'training.md').read_text()
    assert f'```bash\n{JOB_SCRIPT.read_text()}```' in text


def test_a_scheduler_signal_to_the_job_saves_exits_75_requeues_and_the_requeued_job_ends_bit_exact(tmp_path):
    """docs/slurm_train.sh under a stand-in SLURM: USR1 to the job script (``--signal=B:USR1``) -> its trap sends
    SIGTERM to the launcher -> torchrun forwards it to both ranks -> they stop together at iteration 2, rank 0
    saves, both exit 75 and leave stop records -> the launcher exits 75 -> the script requeues. The requeued
    job (the same script) continues with --auto_resume and equals a run never stopped, bit for bit."""
    write_pairs(tmp_path / 'data', n=4)
    kw = dict(total_iter=6, save_freq=3, batch=1)
    ref = write_opt(tmp_path / 'ref.yml', train_opt(tmp_path / 'data', name='ref', **kw))
    cut = write_opt(tmp_path / 'cut.yml', train_opt(tmp_path / 'data', name='cut', **kw))
    proc = _run([*LAUNCH, '-m', 'segsr_basicsr.train', '-opt', ref, '--launcher', 'pytorch'], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]  # not stopped: the launcher ends as torchrun does

    stop_dir, scontrol = tmp_path / 'stop', tmp_path / 'scontrol.log'
    job = ['bash', JOB_SCRIPT, '-opt', cut]
    slurm = dict(SLURM_GPUS_ON_NODE=2, SLURM_JOB_ID=4242, SEGSR_STOP_DIR=stop_dir)
    proc = _run(job, tmp_path, **slurm, SEGSR_TEST_SIGNAL='SIGUSR1', SEGSR_TEST_SIGNAL_AT='step:2',
                SEGSR_TEST_SIGNAL_RANK=0, SEGSR_TEST_SIGNAL_TO='job')
    out = proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.returncode == STOP_EXIT_CODE, out
    assert 'SIGTERM received (rank 0)' in proc.stderr and 'SIGTERM received (rank 1)' in proc.stderr, out
    assert scontrol.read_text() == 'requeue 4242\n'
    exp = tmp_path / 'experiments' / 'cut'
    assert sorted(p.name for p in (exp / 'training_states').iterdir()) == ['2.state']
    assert 'Stopped by SIGTERM at iter: 2,' in exp_logs(tmp_path, 'cut')
    records = {p.name: p.read_text() for p in stop_dir.iterdir()}  # what a job script around bare torchrun reads
    assert sorted(records) == ['rank0', 'rank1'] and all(r.startswith(f'{STOP_EXIT_CODE} ') for r in records.values())

    proc = _run(job, tmp_path, **slurm)  # the requeued job
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert scontrol.read_text() == 'requeue 4242\n' and not list(stop_dir.iterdir())
    assert losses(exp_logs(tmp_path, 'cut')) == losses(exp_logs(tmp_path, 'ref'))
    ref_w, cut_w = (_weights(tmp_path / 'experiments' / n / 'models' / 'net_g_latest.pth') for n in ('ref', 'cut'))
    assert all(torch.equal(ref_w[k][n], cut_w[k][n]) for k in ('params', 'params_ema') for n in ref_w[k])


def test_segsr_infer_stopped_through_the_launcher_exits_75_and_the_same_command_finishes(tmp_path):
    """SIGTERM to the launcher while a rank writes p1: both ranks exit 75 at once, the launcher 75; nothing but
    complete, recorded outputs is visible; the same command then finishes the job without --overwrite
    (that a resumed job's outputs equal one process's: tests/test_infer_ranks.py)."""
    import pytest
    pytest.importorskip('rasterio')
    from basicsr.archs import build_network
    from segsr_basicsr.archs.tiny_configs import TINY_EDSR
    from segsr_basicsr.io.checkpoint import network_metadata
    from test_infer_ranks import _scenes
    torch.manual_seed(0)
    ckpt = tmp_path / 'net.pth'
    torch.save({'params': build_network(dict(TINY_EDSR)).state_dict(),
                **network_metadata({'network_g': TINY_EDSR, 'scale': 4})}, ckpt)
    _scenes(tmp_path / 'in')
    def infer(out):
        return ['-m', 'segsr_basicsr.infer', '--model', ckpt, '--input', tmp_path / 'in', '--output', tmp_path / out,
                '--no-progress', '--tile', '16', '--tile-overlap', '4']

    stopped = _run([*LAUNCH, *infer('out')], tmp_path, SEGSR_TEST_SIGNAL='SIGTERM',
                   SEGSR_TEST_SIGNAL_AT='save:p1_SeGSR_x4.png', SEGSR_TEST_SIGNAL_TO='launcher')
    out = stopped.stdout[-3000:] + stopped.stderr[-5000:]
    assert stopped.returncode == STOP_EXIT_CODE and 'segsr-launch: SIGTERM to the launcher' in stopped.stderr, out
    visible = sorted(p.name for p in (tmp_path / 'out').iterdir() if p.is_file() and not p.name.startswith('.'))
    assert 'p1_SeGSR_x4.png' not in visible and len(visible) < 5, out
    done = tmp_path / 'out' / '.segsr-done'
    assert all((done / f'{n}.json').is_file() for n in visible)  # every visible output is complete and recorded
    again = _run([*LAUNCH, *infer('out')], tmp_path)  # the same command, no --overwrite
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (f'{len(visible)} already done, skipped' in again.stdout) == bool(visible), again.stdout[-2000:]
    finished = sorted(p.name for p in (tmp_path / 'out').iterdir() if p.is_file() and not p.name.startswith('.'))
    assert len(finished) == 5 and all((done / f'{n}.json').is_file() for n in finished)
    assert not (tmp_path / 'out' / '.segsr-parts').exists() and not list((tmp_path / 'out').glob('.*.tmp*'))
