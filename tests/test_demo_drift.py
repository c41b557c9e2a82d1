"""The README's demo figures rest on two things a dependency release can silently move: the synthetic demo
data (opencv's drawing/resize/blur, numpy's random streams, BasicSR's MATLAB bicubic) and the demo network's
initial weights (open_clip's construction and initialisation of the random CLIP tower, torch's RNG and init
functions). These checksums were taken with the lock (requirements/lock.txt, torch 2.14.1 on x86_64); if
one fails after a dependency change, the demo's numbers will move too: find which package (docs/limits.md,
"Reproducing the demo figures"), then update the checksum *and* re-measure the README's figures.
"""
import hashlib
import importlib.metadata as md
import importlib.util

import numpy as np
import pytest
import torch
import yaml

import segsr_basicsr  # noqa: F401  (first: makes basicsr importable)
from basicsr.archs import build_network
from basicsr.utils import set_random_seed
from segsr_basicsr.data import prep
from segsr_basicsr.data.synthetic import aerial_scene
from tiny_configs import REPO

#: sha256 (first 16 hex digits) of the demo images' pixels: val HR+LR, the first 2 train tiles, the scene
DEMO_DATA = '42f475b01ac416a2'
#: sha256 (first 16 hex digits) of the demo network's initial state_dict (seed 0): CLIP tower / all the rest
INIT_CLIP = 'e6933952a50e45d6'
INIT_REST = 'a1442c81ee3def57'

VERSIONS = ('torch', 'open_clip_torch', 'opencv-python', 'numpy', 'timm')


def _versions():
    return ', '.join(f'{p} {md.version(p)}' for p in VERSIONS)


def _sha(arrays):
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f'{a.dtype}{a.shape}'.encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _state_sha(sd):
    h = hashlib.sha256()
    for k, t in sorted(sd.items()):
        h.update(k.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _demo_module():
    spec = importlib.util.spec_from_file_location('make_demo_dataset', REPO / 'datasets_prep' / 'make_demo_dataset.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_demo_data_pixels_unchanged():
    """The same recipe as datasets_prep/make_demo_dataset.py (seed 0, 128-pixel tiles), in memory."""
    demo = _demo_module()
    arrays = []
    for i, (h, w) in enumerate(demo.VAL_SIZES):
        arrays += prep.hr_lr_pair(aerial_scene(h, w, [0, 1, i]), demo.SCALE)
    for i in range(2):
        arrays += prep.hr_lr_pair(aerial_scene(128, 128, [0, 0, i]), demo.SCALE)
    arrays += prep.hr_lr_pair(aerial_scene(demo.SCENE_LR[0] * demo.SCALE, demo.SCENE_LR[1] * demo.SCALE, [0, 2, 0]),
                              demo.SCALE)
    got = _sha(arrays)
    assert got == DEMO_DATA, (f'the demo data changed ({got}, was {DEMO_DATA}) with {_versions()}: the README '
                              'figures will move; see this module\'s docstring')


def test_demo_network_initial_weights_unchanged():
    """The demo network as training builds it (options/demo/train_SeGSR_HAT_demo_x4.yml, manual_seed 0)."""
    opt = yaml.safe_load((REPO / 'options' / 'demo' / 'train_SeGSR_HAT_demo_x4.yml').read_text())
    set_random_seed(opt['manual_seed'])
    net = build_network(opt['network_g'])
    sd = net.state_dict()
    clip = {k: v for k, v in sd.items() if 'clip' in k or 'visual' in k}  # guidance.encoder.visual.*
    if not clip:
        pytest.fail(f'no CLIP tower keys found in the demo network: {sorted(sd)[:5]} ...')
    rest = {k: v for k, v in sd.items() if k not in clip}
    got = (_state_sha(clip), _state_sha(rest))
    assert got[0] == INIT_CLIP, (f'the random CLIP tower\'s initial weights changed ({got[0]}, was {INIT_CLIP}) '
                                 f'with {_versions()}: open_clip\'s construction/initialisation (or torch\'s RNG)')
    assert got[1] == INIT_REST, (f'the demo network\'s other initial weights changed ({got[1]}, was {INIT_REST}) '
                                 f'with {_versions()}: if only these changed, something drew a different '
                                 'number of random values before them (e.g. open_clip building its towers) or '
                                 'an init function changed')
