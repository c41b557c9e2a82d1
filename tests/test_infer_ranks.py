"""segsr-infer over many ranks (torchrun, 2 CPU ranks, gloo): shares by pixels, outputs identical to one
process and written once, a killed run re-run does only what is missing, a changed option is refused
without --overwrite (docs/contract.md#who-may-replace-an-output)."""
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from segsr_basicsr.archs.tiny_configs import TINY_EDSR
from segsr_basicsr.errors import InferError
from segsr_basicsr.io.checkpoint import network_metadata
from segsr_basicsr.inference.batch_plan import shares
from train_opts import PYTHON, env

rasterio = pytest.importorskip('rasterio')


def test_shares_balance_pixels_not_files():
    assert shares([100, 1, 1, 1, 1], 2) == [[0], [1, 2, 3, 4]]
    assert shares([5, 5, 4, 3, 3], 2) == [[0, 2], [1, 3, 4]] and shares([], 3) == [[], [], []]


def _scenes(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 52), (12, 16), (24, 20)]):
        img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (3, 3), 0)
        cv2.imwrite(str(folder / f'p{i}.png'), img)
    for i, (h, w) in enumerate([(120, 96), (16, 24)]):  # g0 holds most pixels: 2 ranks share it in strips
        data = rng.integers(1, 256, (3, h, w), dtype=np.uint8)
        data[:, :8, :8] = 0
        profile = dict(driver='GTiff', width=w, height=h, count=3, dtype='uint8', crs='EPSG:32633', nodata=0,
                       transform=rasterio.transform.from_origin(500000, 4000000 + i, 0.5, 0.5))
        with rasterio.open(folder / f'g{i}.tif', 'w', **profile) as dst:
            dst.write(data)
            dst.update_tags(SENSOR='test')
    return folder


def _infer(cwd, out, ckpt, *extra, ranks=1, hook=None):
    args = ['-m', 'segsr_basicsr.infer', '--model', str(ckpt), '--input', str(cwd / 'in'), '--output', str(out),
            '--no-progress', '--tile', '16', '--tile-overlap', '4', *extra]
    cmd = [PYTHON, *args] if ranks == 1 else \
        [PYTHON, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={ranks}', *args]
    e = env(SEGSR_TEST_SAVE_HOOK=hook) if hook else env()
    return subprocess.run(cmd, cwd=cwd, env=e, capture_output=True, text=True, timeout=300)


def _same_outputs(a, b):
    names = sorted(p.name for p in Path(a).iterdir() if p.is_file())
    assert names == sorted(p.name for p in Path(b).iterdir() if p.is_file())
    for n in names:
        if n.endswith('.png'):
            assert (Path(a) / n).read_bytes() == (Path(b) / n).read_bytes(), n
        else:
            with rasterio.open(Path(a) / n) as x, rasterio.open(Path(b) / n) as y:
                assert np.array_equal(x.read(), y.read()) and x.profile == y.profile and x.tags() == y.tags(), n
    return names


def test_two_ranks_equal_one_process_resume_after_a_kill_and_refuse_a_change_without_overwrite(tmp_path):
    from basicsr.archs import build_network
    torch.manual_seed(0)
    ckpt = tmp_path / 'net.pth'
    torch.save({'params': build_network(dict(TINY_EDSR)).state_dict(),
                **network_metadata({'network_g': TINY_EDSR, 'scale': 4})}, ckpt)
    _scenes(tmp_path / 'in')
    one = _infer(tmp_path, tmp_path / 'one', ckpt)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _infer(tmp_path, tmp_path / 'two', ckpt, ranks=2)
    assert two.returncode == 0, two.stderr[-3000:] + two.stdout[-2000:]
    names = _same_outputs(tmp_path / 'one', tmp_path / 'two')
    assert len(names) == 5 and 'on 2 rank(s)' in two.stdout and '5 scene(s)' in two.stdout
    assert sum(two.stdout.count(f' -> {tmp_path / "two" / n}') for n in names) == 5  # each written once
    assert 'g0.tif strip 2/2 (LR rows ' in two.stdout and 'assembled from 2 strips' in two.stdout  # one scene, two ranks
    assert not (tmp_path / 'two' / '.segsr-parts').exists()  # the parts went, and their folder

    # a rank killed while writing one output; the re-run does only what is missing
    cut = tmp_path / 'cut'
    killed = _infer(tmp_path, cut, ckpt, ranks=2, hook='kill:p1_SeGSR_x4.png')
    assert killed.returncode != 0
    before = {p.name: p.stat().st_mtime_ns for p in cut.iterdir() if p.is_file() and not p.name.startswith('.')}
    assert 'p1_SeGSR_x4.png' not in before and len(before) < 5
    again = _infer(tmp_path, cut, ckpt, ranks=2)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f'{len(before)} already done, skipped' in again.stdout
    assert {n: (cut / n).stat().st_mtime_ns for n in before} == before  # nothing finished was recomputed
    _same_outputs(tmp_path / 'one', cut)
    assert not [p for p in cut.iterdir() if '.tmp' in p.name]  # the killed run's temporary file was cleared
    # a rank killed while writing its strip of the shared scene: the re-run redoes only the missing strip
    cut2 = tmp_path / 'cut2'
    assert _infer(tmp_path, cut2, ckpt, ranks=2, hook='kill:g0_SeGSR_x4.strip2of2.tif').returncode != 0
    strip1_done = (cut2 / '.segsr-done' / 'g0_SeGSR_x4.strip1of2.tif.json').is_file()
    again = _infer(tmp_path, cut2, ckpt, ranks=2)
    assert again.returncode == 0 and 'g0.tif strip 2/2 (LR rows ' in again.stdout, again.stderr[-3000:]
    assert ('g0.tif strip 1/2 (LR rows ' in again.stdout) != strip1_done
    _same_outputs(tmp_path / 'one', cut2)
    # a changed option is another job: refused (docs/contract.md), every output recomputed with --overwrite
    changed = _infer(tmp_path, cut, ckpt, '--tile-overlap', '8')
    assert changed.returncode == 2 and 'made by other settings: tile ' in changed.stderr, changed.stderr[-3000:]
    changed = _infer(tmp_path, cut, ckpt, '--tile-overlap', '8', '--overwrite')
    assert changed.returncode == 0 and '5 scene(s)' in changed.stdout and 'already done' not in changed.stdout


def test_api_upscale_batch_does_only_what_is_missing(tmp_path):
    import segsr_basicsr
    from basicsr.archs import build_network
    torch.manual_seed(0)
    ckpt = tmp_path / 'net.pth'
    torch.save({'params': build_network(dict(TINY_EDSR)).state_dict(),
                **network_metadata({'network_g': TINY_EDSR, 'scale': 4})}, ckpt)
    _scenes(tmp_path / 'in')
    model = segsr_basicsr.load_model(ckpt, device='cpu')
    first = model.upscale_batch([tmp_path / 'in'], tmp_path / 'api', tile=16, overlap=4)
    assert len(first['done']) == 5 and first['skipped'] == 0
    again = model.upscale_batch([tmp_path / 'in'], tmp_path / 'api', tile=16, overlap=4)
    assert again['done'] == [] and again['skipped'] == 5 and again['megapixels'] == 0
    with pytest.raises(InferError, match='made by other settings: tile '):  # docs/contract.md
        model.upscale_batch([tmp_path / 'in'], tmp_path / 'api', tile=16, overlap=8)
    assert len(model.upscale_batch([tmp_path / 'in'], tmp_path / 'api', tile=16, overlap=8, overwrite=True)['done']) == 5


def test_the_job_line_adds_up_every_rank_of_this_job_only(tmp_path):
    from segsr_basicsr.utils.progress import JobProgress
    jobs = [JobProgress(4, 10.0, rank=r, world=2, folder=tmp_path, token='run-a', enabled=False) for r in (0, 1)]
    jobs[0].advance(1.5)
    jobs[1].advance(2.0)
    jobs[1].finish(3.0, scenes=0.5)  # half a shared scene: its strip is done
    jobs[0].finish(2.5)
    JobProgress(4, 10.0, rank=1, world=2, folder=tmp_path / 'old', token='run-b', enabled=False).finish(9.0)
    assert jobs[0].totals() == (1.5, 5.5)
    assert jobs[0].line().startswith('job: 1/4 scenes on 2 ranks, 5.5/10.0 MP, ')
    (tmp_path / 'rank1.json').write_text('{"token": "run-b", "scenes": 3, "mp": 9.0}')  # a stopped job's file
    assert jobs[0].totals() == (1.0, 2.5)


def test_launcher_slurm_shares_the_inputs_like_torchrun(tmp_path):
    """``srun --ntasks=2 python -m segsr_basicsr.infer --launcher slurm``: two processes started as SLURM starts
    them (SLURM_PROCID/NTASKS/NODELIST; scontrol stands in for SLURM's), outputs equal to one process."""
    import socket
    from basicsr.archs import build_network
    torch.manual_seed(0)
    ckpt = tmp_path / 'net.pth'
    torch.save({'params': build_network(dict(TINY_EDSR)).state_dict(),
                **network_metadata({'network_g': TINY_EDSR, 'scale': 4})}, ckpt)
    _scenes(tmp_path / 'in')
    assert _infer(tmp_path, tmp_path / 'one', ckpt).returncode == 0
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'scontrol').write_text('#!/bin/sh\necho 127.0.0.1\n')
    (bin_dir / 'scontrol').chmod(0o755)
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    args = ['-m', 'segsr_basicsr.infer', '--model', str(ckpt), '--input', str(tmp_path / 'in'), '--output',
            str(tmp_path / 'slurm'), '--no-progress', '--tile', '16', '--tile-overlap', '4', '--launcher', 'slurm']
    procs = [subprocess.Popen([PYTHON, *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env(SLURM_PROCID=r, SLURM_NTASKS=2, SLURM_NODELIST='node01', SLURM_LOCALID=r,
                                      MASTER_PORT=port, PATH=f'{bin_dir}:{os.environ["PATH"]}'))
             for r in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert 'on 2 rank(s)' in outs[0][0] and 'assembled from 2 strips' in outs[0][0] + outs[1][0]
    _same_outputs(tmp_path / 'one', tmp_path / 'slurm')
