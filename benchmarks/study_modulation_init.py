"""Study: how should the LMM (guidance.modulation_init) start when guidance is added to a trained backbone?

    nice python datasets_prep/split_dataset.py --src ../shared/data/ucmerced_dev/images --out /tmp/ucm
    nice python datasets_prep/make_bicubic.py --input /tmp/ucm/train/HR /tmp/ucm/val/HR --scales 4
    nice python benchmarks/study_modulation_init.py --data /tmp/ucm

1. A small guidance-off SeGSR_HAT (x4) is trained for ``--pretrain-iters`` (the "pretrained backbone").
2. From those weights, each variant trains ``--iters`` more iterations with the same data order, optimiser
   and learning rate: ``off`` (guidance-off backbone, trained equally long), and guidance with each
   ``modulation_init`` in MODULATION_INITS (``default``: PyTorch's conv init, as the official code;
   ``zero``: the conv producing gamma/beta starts at zero, so the LMM starts as LN(F)).
3. Validation PSNR/SSIM (Y channel, crop = scale, BasicSR's metrics) on the val split, at the start of
   step 2 ("step 0") and after it, against MATLAB-bicubic upsampling of the same LR.

CLIP is the shipped 2-layer SeGSR-Tiny-ViT with random weights (no CLIP weights can be downloaded here):
the study measures how each initialisation disturbs a trained backbone and recovers, not the value of
real CLIP semantics. Each (variant, seed) pair repeats with ``--seeds``; the table prints the mean and
the spread (max - min) over seeds. CPU only; threads, load and versions are printed with the table.
"""
import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import segsr_basicsr  # noqa: E402,F401  (registers archs, makes basicsr importable)
from basicsr.metrics import calculate_psnr, calculate_ssim  # noqa: E402
from basicsr.utils import tensor2img  # noqa: E402
from basicsr.utils.matlab_functions import imresize  # noqa: E402
from segsr_basicsr.archs.hat_arch import SeGSR_HAT  # noqa: E402
from segsr_basicsr.archs.modulation import MODULATION_INITS  # noqa: E402
from segsr_basicsr.data import prep  # noqa: E402

SCALE = 4
#: a small HAT: 3 RHAGs (K = 3 modulated units), 32 channels, window 8
STUDY_HAT = dict(upscale=SCALE, in_chans=3, img_size=16, window_size=8, compress_ratio=4, squeeze_factor=8,
                 conv_scale=0.01, overlap_ratio=0.5, img_range=1., depths=[2, 2, 2], embed_dim=32,
                 num_heads=[4, 4, 4], mlp_ratio=2, upsampler='pixelshuffle', resi_connection='1conv')
STUDY_GUIDANCE = dict(clip_model='SeGSR-Tiny-ViT', clip_pretrained=None, lora_rank=4, lora_alpha=4)


def load_pairs(root: Path, split: str):
    """[(HR uint8 (3, H, W), LR uint8 (3, H/s, W/s))] of ROOT/split/{HR,LR}_x4, RGB."""
    hr_dir, lr_dir = root / split / f'HR_x{SCALE}', root / split / f'LR_x{SCALE}'
    names = prep.list_images(hr_dir)
    if not names:
        raise SystemExit(f'{hr_dir}: no images; prepare the data first (see this script\'s docstring)')
    pairs = []
    for name in names:
        hr, lr = prep.read_image(hr_dir / name), prep.read_image(lr_dir / name)
        pairs.append((torch.from_numpy(np.ascontiguousarray(hr)).permute(2, 0, 1),
                      torch.from_numpy(np.ascontiguousarray(lr)).permute(2, 0, 1)))
    return names, pairs


def batches(pairs, iters, batch, gt_size, seed):
    """The same random crops and flips for every variant of one seed: (LR (B,3,g/s,g/s), HR (B,3,g,g)) in [0, 1]."""
    rng = np.random.default_rng(seed)
    lq = gt_size // SCALE
    for _ in range(iters):
        lrs, hrs = [], []
        for i in rng.integers(len(pairs), size=batch):
            hr, lr = pairs[i]
            y, x = rng.integers(lr.shape[1] - lq + 1), rng.integers(lr.shape[2] - lq + 1)
            lr_c, hr_c = lr[:, y:y + lq, x:x + lq], hr[:, y * SCALE:(y + lq) * SCALE, x * SCALE:(x + lq) * SCALE]
            if rng.random() < 0.5:
                lr_c, hr_c = lr_c.flip(-1), hr_c.flip(-1)
            if rng.random() < 0.5:
                lr_c, hr_c = lr_c.transpose(1, 2), hr_c.transpose(1, 2)
            lrs.append(lr_c)
            hrs.append(hr_c)
        yield torch.stack(lrs).float() / 255, torch.stack(hrs).float() / 255


def train(net, pairs, iters, batch, gt_size, lr, seed):
    net.train()
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.99))
    for lq, gt in batches(pairs, iters, batch, gt_size, seed):
        loss = F.l1_loss(net(lq), gt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def evaluate(net, pairs):
    """Mean PSNR, SSIM (Y, crop = scale) over the val pairs."""
    net.eval()
    psnr, ssim = [], []
    for hr, lr in pairs:
        sr = net(lr[None].float() / 255).clamp(0, 1)
        sr_img, gt_img = tensor2img(sr), tensor2img(hr[None].float() / 255)
        psnr.append(calculate_psnr(sr_img, gt_img, SCALE, test_y_channel=True))
        ssim.append(calculate_ssim(sr_img, gt_img, SCALE, test_y_channel=True))
    return float(np.mean(psnr)), float(np.mean(ssim))


def bicubic(pairs):
    psnr, ssim = [], []
    for hr, lr in pairs:
        up = imresize(lr.permute(1, 2, 0).numpy().astype(np.float64) / 255, SCALE)
        up_img = (np.clip(up, 0, 1) * 255).round().astype(np.uint8)[..., ::-1]
        gt_img = hr.permute(1, 2, 0).numpy()[..., ::-1]
        psnr.append(calculate_psnr(up_img, gt_img, SCALE, test_y_channel=True))
        ssim.append(calculate_ssim(up_img, gt_img, SCALE, test_y_channel=True))
    return float(np.mean(psnr)), float(np.mean(ssim))


def build(variant: str, backbone_state: dict):
    if variant == 'off':
        net = SeGSR_HAT(**STUDY_HAT, guidance=None)
    else:
        net = SeGSR_HAT(**STUDY_HAT, guidance={**STUDY_GUIDANCE, 'modulation_init': variant})
    missing, unexpected = net.load_state_dict(backbone_state, strict=False)
    assert not unexpected and all(k.startswith(('guidance.', 'modulations.')) for k in missing), (missing, unexpected)
    return net


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', required=True, help='split root with {train,val}/{HR,LR}_x4 (see above)')
    parser.add_argument('--pretrain-iters', type=int, default=500, help='guidance-off backbone iterations')
    parser.add_argument('--iters', type=int, default=300, help='iterations per variant, from the backbone')
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--gt-size', type=int, default=64)
    parser.add_argument('--lr', type=float, default=5e-4, help='Adam learning rate of step 1')
    parser.add_argument('--finetune-lr', type=float, help='learning rate of step 2 (default: --lr)')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    parser.add_argument('--variants', nargs='+', default=['off', *MODULATION_INITS])
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--backbone', metavar='PATH', help='reuse the step-1 backbone saved here (written when '
                        'missing; it must come from the same --data, --pretrain-iters and settings)')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.data)
    _, train_pairs = load_pairs(root, 'train')
    _, val_pairs = load_pairs(root, 'val')
    print(f'# torch {torch.__version__}, {platform.python_version()}, threads {torch.get_num_threads()}, '
          f'load {os.getloadavg()[0]:.1f}, train {len(train_pairs)} / val {len(val_pairs)} images, x{SCALE}, '
          f'gt_size {args.gt_size}, batch {args.batch}, lr {args.lr} then {args.finetune_lr or args.lr}, '
          f'pretrain {args.pretrain_iters} + '
          f'{args.iters} iters, seeds {args.seeds}', flush=True)

    t0 = time.time()
    if args.backbone and Path(args.backbone).is_file():
        backbone = SeGSR_HAT(**STUDY_HAT, guidance=None)
        backbone.load_state_dict(torch.load(args.backbone, weights_only=True))
    else:
        torch.manual_seed(1000)
        backbone = train(SeGSR_HAT(**STUDY_HAT, guidance=None), train_pairs, args.pretrain_iters, args.batch,
                         args.gt_size, args.lr, seed=1000)
        if args.backbone:
            torch.save(backbone.state_dict(), args.backbone)
    backbone_state = copy.deepcopy(backbone.state_dict())
    start = evaluate(backbone, val_pairs)
    print(f'# backbone after {args.pretrain_iters} iters: {start[0]:.2f} dB / {start[1]:.4f} '
          f'({time.time() - t0:.0f} s)', flush=True)

    rows = {}
    for variant in args.variants:
        for seed in args.seeds:
            t0 = time.time()
            torch.manual_seed(seed)  # guidance/modulation init
            net = build(variant, backbone_state)
            at_start = evaluate(net, val_pairs)
            train(net, train_pairs, args.iters, args.batch, args.gt_size, args.finetune_lr or args.lr, seed=seed)
            end = evaluate(net, val_pairs)
            rows.setdefault(variant, []).append((at_start, end))
            print(f'# {variant} seed {seed}: step 0 {at_start[0]:.2f} dB, after {args.iters}: {end[0]:.2f} dB / '
                  f'{end[1]:.4f} ({time.time() - t0:.0f} s, load {os.getloadavg()[0]:.1f})', flush=True)

    bic = bicubic(val_pairs)
    print()
    print(f'| variant | PSNR at step 0 (dB) | PSNR after {args.iters} iters (dB) | SSIM | spread over seeds (dB) |')
    print('|---|---|---|---|---|')
    print(f'| bicubic | {bic[0]:.2f} | {bic[0]:.2f} | {bic[1]:.4f} | - |')
    names = {'off': 'guidance off (backbone trained equally long)'}
    for variant, runs in rows.items():
        p0 = statistics.mean(r[0][0] for r in runs)
        p1 = statistics.mean(r[1][0] for r in runs)
        s1 = statistics.mean(r[1][1] for r in runs)
        spread = max(r[1][0] for r in runs) - min(r[1][0] for r in runs)
        label = names.get(variant, f'guidance, modulation_init: {variant}')
        print(f'| {label} | {p0:.2f} | {p1:.2f} | {s1:.4f} | {spread:.2f} |')


if __name__ == '__main__':
    main()
