"""Tiny BasicSR training setups for the entry-point / resume / DDP / reliability tests (seconds on CPU)."""
import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

#: 1-block, 8-feature MSRResNet: a real BasicSR arch that trains in milliseconds per step
TINY_MSRRESNET = dict(type='MSRResNet', num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, upscale=4)


def have_arch(name):
    import segsr_basicsr  # noqa: F401
    from basicsr.utils.registry import ARCH_REGISTRY
    return name in ARCH_REGISTRY


def tiny_network():
    """SeGSR_HAT (tiny, no guidance) once it exists, else MSRResNet: both x4."""
    if have_arch('SeGSR_HAT'):
        from tiny_configs import TINY_HAT
        return dict(type='SeGSR_HAT', **TINY_HAT)
    return dict(TINY_MSRRESNET)


def write_pairs(root, n=4, gt_size=32, scale=4, seed=0):
    """``n`` structured (gradient + blobs + noise) GT PNGs and their downscaled LQ PNGs; returns (gt_dir, lq_dir)."""
    rng = np.random.default_rng(seed)
    gt_dir, lq_dir = Path(root) / 'gt', Path(root) / 'lq'
    gt_dir.mkdir(parents=True, exist_ok=True)
    lq_dir.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:gt_size, 0:gt_size] / gt_size
    for i in range(n):
        img = np.stack([xx * 200 * rng.random(), yy * 200 * rng.random(), (xx + yy) * 100], -1)
        img += rng.normal(0, 20, img.shape)
        img = np.clip(img, 0, 255).astype(np.uint8)
        cv2.imwrite(str(gt_dir / f'{i:03d}.png'), img)
        lq = cv2.resize(img, (gt_size // scale, gt_size // scale), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(lq_dir / f'{i:03d}.png'), lq)
    return str(gt_dir), str(lq_dir)


def train_opt(data_root, name='tiny', total_iter=8, save_freq=4, val_freq=None, batch=2, workers=0, network=None,
              ema=0.999, model_type='SeGSRModel', gt_size=16):
    """A complete BasicSR training option dict on the pairs in ``data_root`` (see write_pairs)."""
    gt, lq = str(Path(data_root) / 'gt'), str(Path(data_root) / 'lq')
    opt = dict(
        name=name,
        model_type=model_type,
        scale=4,
        num_gpu='auto',
        manual_seed=10,
        datasets=dict(
            train=dict(
                name='tiny_train', type='PairedImageDataset', dataroot_gt=gt, dataroot_lq=lq,
                io_backend=dict(type='disk'), gt_size=gt_size, use_hflip=True, use_rot=True, use_shuffle=True,
                num_worker_per_gpu=workers, batch_size_per_gpu=batch, dataset_enlarge_ratio=1, prefetch_mode=None)),
        network_g=copy.deepcopy(network or tiny_network()),
        path=dict(pretrain_network_g=None, strict_load_g=True, resume_state=None),
        train=dict(
            ema_decay=ema,
            optim_g=dict(type='Adam', lr=2e-3, weight_decay=0, betas=[0.9, 0.99]),
            scheduler=dict(type='MultiStepLR', milestones=[6], gamma=0.5),
            total_iter=total_iter, warmup_iter=-1,
            pixel_opt=dict(type='L1Loss', loss_weight=1.0, reduction='mean')),
        logger=dict(print_freq=1, save_checkpoint_freq=save_freq, use_tb_logger=False),
    )
    if val_freq:
        opt['datasets']['val'] = dict(name='tiny_val', type='PairedImageDataset', dataroot_gt=gt, dataroot_lq=lq,
                                      io_backend=dict(type='disk'))
        opt['val'] = dict(val_freq=val_freq, save_img=False,
                          metrics=dict(psnr=dict(type='calculate_psnr', crop_border=4, test_y_channel=False)))
    return opt


def write_opt(path, opt):
    Path(path).write_text(yaml.safe_dump(opt, sort_keys=False))
    return str(path)


#: test-only fault injection (tests/fault_injection/sitecustomize.py), active in subprocesses given this variable
SAVE_HOOK_ENV = 'SEGSR_TEST_SAVE_HOOK'
FAULT_INJECTION = REPO / 'tests' / 'fault_injection'


def env(**extra):
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1', CUDA_VISIBLE_DEVICES='')
    e.update({k: str(v) for k, v in extra.items()})
    if any(k.startswith('SEGSR_TEST_') for k in extra):
        e['PYTHONPATH'] = os.pathsep.join(p for p in (str(FAULT_INJECTION), e.get('PYTHONPATH')) if p)
    return e


def run_train(cwd, opt_path, *args, timeout=300, check=True, extra_env=None, module='segsr_basicsr.train'):
    """``python -m segsr_basicsr.train -opt ...`` in ``cwd``; returns the CompletedProcess."""
    proc = subprocess.run([PYTHON, '-m', module, '-opt', str(opt_path), *args], cwd=cwd,
                          env=env(**(extra_env or {})), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'{module} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}')
    return proc


LOSS_LINE = re.compile(r'iter:\s*(\d+),.*?l_pix: ([0-9.e+-]+)')


def losses(log_text):
    """{iter: l_pix} from basicsr's MessageLogger lines."""
    return {int(m.group(1)): float(m.group(2)) for m in LOSS_LINE.finditer(log_text)}


def exp_logs(cwd, name):
    """Concatenated text of every train_*.log of experiment ``name`` (a resumed run adds one)."""
    root = Path(cwd) / 'experiments' / name
    return '\n'.join(p.read_text() for p in sorted(root.glob('train_*.log')))
