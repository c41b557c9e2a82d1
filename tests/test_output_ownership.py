"""Outputs belong to the job that made them (docs/contract.md#who-may-replace-an-output, #what-is-never-lost).

A second job (another checkpoint) in the same folder refuses while the first runs and after it finished; the
same command after SIGKILL finishes the job without --overwrite and leaves nothing behind; an input replaced by
other pixels of the same size and time is noticed by its content digest.
"""
import json
import os
import shutil
import subprocess
import threading
import time

import cv2
import numpy as np
import pytest
import torch

import segsr_basicsr  # noqa: F401,I001
from basicsr.archs import build_network
from segsr_basicsr.api import load_model
from segsr_basicsr.archs.tiny_configs import TINY_EDSR
from segsr_basicsr.errors import InferError
from segsr_basicsr.inference import job_lock
from segsr_basicsr.inference.records import RECORDS_DIR
from segsr_basicsr.infer import main
from segsr_basicsr.io import atomic
from segsr_basicsr.io.checkpoint import network_metadata
from segsr_basicsr.io.digest import file_sha256
from train_opts import PYTHON, env


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp('ckpts')
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(root / f'net{seed}.pth')
        torch.save({'params': build_network(dict(TINY_EDSR)).state_dict(),
                    **network_metadata({'network_g': TINY_EDSR, 'scale': 4})}, paths[-1])
    return paths


def _image(path, seed=0, size=(20, 24)):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))
    return path


def _leftovers(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob('*')
                  if '.tmp' in p.name or p.name == job_lock.LOCK_NAME or '.segsr-parts' in p.parts)


def test_a_second_job_with_another_checkpoint_never_replaces_the_first_jobs_outputs(ckpts, tmp_path, monkeypatch):
    src, out = _image(tmp_path / 'in' / 'scene.png'), tmp_path / 'out'
    first, second = (load_model(c, 'cpu') for c in ckpts)
    reached, go, commit = threading.Event(), threading.Event(), atomic._commit

    def held_commit(tmp, path):  # the first job stops just before its output appears
        if os.path.basename(path) == 'scene_SeGSR_x4.png':
            reached.set()
            go.wait(60)
        commit(tmp, path)

    monkeypatch.setattr(atomic, '_commit', held_commit)
    job = threading.Thread(target=first.upscale_batch, args=([src], out))
    job.start()
    assert reached.wait(60)
    with pytest.raises(InferError, match='another segsr-infer job is writing here .*other settings'):
        second.upscale_batch([src], out)  # while the first runs: the lock
    go.set()
    job.join(60)
    made = (out / 'scene_SeGSR_x4.png').read_bytes()
    with pytest.raises(InferError, match=r'scene_SeGSR_x4.png: was made by other settings: checkpoint \w+… '
                                         r'\(this job: \w+…\)\. Pass --overwrite to replace it, or choose another '):
        second.upscale_batch([src], out)  # after it finished: the record
    assert (out / 'scene_SeGSR_x4.png').read_bytes() == made and not _leftovers(out)
    assert len(second.upscale_batch([src], tmp_path / 'elsewhere')['done']) == 1
    assert len(second.upscale_batch([src], out, overwrite=True)['done']) == 1
    assert (out / 'scene_SeGSR_x4.png').read_bytes() != made


def test_the_same_command_after_sigkill_finishes_without_overwrite(ckpts, tmp_path, capsys):
    rasterio = pytest.importorskip('rasterio')
    src, out = tmp_path / 'in' / 'scene.tif', tmp_path / 'out'
    src.parent.mkdir()
    with rasterio.open(src, 'w', driver='GTiff', width=24, height=20, count=3, dtype='uint8', crs='EPSG:32633',
                       transform=rasterio.transform.from_origin(500000, 4e6, 10, 10)) as dst:
        dst.write(np.random.default_rng(0).integers(1, 256, (3, 20, 24), dtype=np.uint8))
    args = ['--model', str(ckpts[0]), '--input', str(src), '--output', str(out), '--no-progress', '--cog',
            '--device', 'cpu']
    killed = subprocess.run([PYTHON, '-m', 'segsr_basicsr.infer', *args], env=env(
        SEGSR_TEST_SAVE_HOOK='kill:scene_SeGSR_x4.tif'), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (out / 'scene_SeGSR_x4.tif').exists() and (out / RECORDS_DIR / job_lock.LOCK_NAME).is_file()
    # what else a stop can leave: a COG interrupted mid-translation, strips of a run with another rank count
    (out / '.scene_SeGSR_x4.tif.4242.tmp.gtiff.tmp').write_bytes(b'half')
    (out / '.segsr-parts').mkdir()
    (out / '.segsr-parts' / 'scene_SeGSR_x4.strip1of3.tif').write_bytes(b'part')
    (out / '.segsr-parts' / '.scene_SeGSR_x4.strip2of3.tif.4242.tmp').write_bytes(b'half')
    assert len(_leftovers(out)) == 6

    main(args)  # the same command, no --overwrite
    assert '1 scene(s)' in capsys.readouterr().out and not _leftovers(out)
    with rasterio.open(out / 'scene_SeGSR_x4.tif') as ds:
        assert (ds.width, ds.height, ds.crs.to_epsg()) == (96, 80, 32633)
    main(args)
    assert '1 already done, skipped' in capsys.readouterr().out


def test_an_input_replaced_by_other_pixels_of_the_same_size_and_time_is_recomputed(ckpts, tmp_path):
    model = load_model(ckpts[0], 'cpu')
    src, out = _image(tmp_path / 'in' / 'scene.bmp'), tmp_path / 'out'  # BMP: the size is set by the pixel count
    assert len(model.upscale_batch([src], out)['done']) == 1
    made, st = (out / 'scene_SeGSR_x4.png').read_bytes(), src.stat()
    _image(src, seed=1)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (src.stat().st_size, src.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert len(model.upscale_batch([src], out)['done']) == 1  # docs/contract.md: the input changed
    assert (out / 'scene_SeGSR_x4.png').read_bytes() != made
    record = json.loads((out / RECORDS_DIR / 'scene_SeGSR_x4.png.json').read_text())
    assert record['input_sha256'] != '' and record['input_sha256'] == file_sha256(src)
    # the same content moved elsewhere is still done; other content under the same name elsewhere is another job's
    moved = tmp_path / 'moved' / 'scene.bmp'
    moved.parent.mkdir()
    shutil.copy(src, moved)
    assert model.upscale_batch([moved], out)['skipped'] == 1
    with pytest.raises(InferError, match=r'scene_SeGSR_x4.png: was made from another input \(.*in/scene.bmp\)'):
        model.upscale_batch([_image(tmp_path / 'other' / 'scene.bmp', seed=2)], out)


def test_a_stopped_jobs_lock_is_taken_over_and_a_running_ones_refused(tmp_path):
    lock_path = tmp_path / job_lock.LOCK_NAME
    dead = subprocess.run([PYTHON, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    holders = {'dead pid, this host': (dict(host=job_lock.socket.gethostname(), pid=int(dead.stdout)), 0, True),
               'running, another host': (dict(host='node-elsewhere', pid=1), 0, False),
               'heartbeat stopped, another host': (dict(host='node-elsewhere', pid=1), job_lock.STALE_AFTER + 5, True),
               'running, this host': (dict(host=job_lock.socket.gethostname(), pid=os.getpid()), 0, False)}
    for what, (holder, age, taken) in holders.items():
        lock_path.write_text(json.dumps(dict(holder, token='theirs', settings_sha256='x', started='then')))
        os.utime(lock_path, (time.time() - age,) * 2)
        lock = job_lock.JobLock(tmp_path, 'y', 'mine')
        if taken:
            lock.acquire()
            assert json.loads(lock_path.read_text())['token'] == 'mine', what
            lock.release()
            assert not lock_path.exists(), what
        else:
            with pytest.raises(InferError, match=f'pid {holder["pid"]} on {holder["host"]}, since then, other '):
                lock.acquire()
            assert json.loads(lock_path.read_text())['token'] == 'theirs', what
    assert sorted(p.name for p in tmp_path.iterdir()) == [job_lock.LOCK_NAME]
