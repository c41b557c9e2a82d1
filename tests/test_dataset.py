"""SeGSRBicubicDataset: HR from folder / meta_info / LMDB, LR made on the fly, bit-identical to the prep script's LR."""
import cv2
import numpy as np
import pytest
import tifffile

import segsr_basicsr  # noqa: F401,I001  (compat first, then registers everything)
from basicsr.data import build_dataset
from basicsr.utils import tensor2img
from basicsr.utils.registry import DATASET_REGISTRY

from segsr_basicsr.data import prep
from segsr_basicsr.data.bicubic_dataset import SeGSRBicubicDataset
from segsr_basicsr.data.synthetic import aerial_scene
from tiny_configs import RS_SAMPLES

#: HR sizes (h, w): not all multiples of 2, 3 or 4, so the mod-crop is exercised
SIZES = [(96, 96), (101, 98), (70, 123)]


@pytest.fixture(scope='module')
def hr_dir(tmp_path_factory):
    """A few HR PNGs: crops of a real aerial image when ../shared is present, else synthetic scenes."""
    root = tmp_path_factory.mktemp('hr') / 'HR'
    root.mkdir()
    real = RS_SAMPLES / 'aid' / 'airport_285_GT.png'
    big = cv2.imread(str(real)) if real.is_file() else None
    for i, (h, w) in enumerate(SIZES):
        img = big[40 * i:40 * i + h, 60 * i:60 * i + w] if big is not None else aerial_scene(h, w, i)
        prep.write_png(root / f'img_{i}.png', img)
    return root


def opt(root, phase='val', scale=4, **kw):
    o = dict(name='t', type='SeGSRBicubicDataset', dataroot_gt=str(root), io_backend=dict(type='disk'), scale=scale,
             phase=phase)
    if phase == 'train':
        o.update(gt_size=48, use_hflip=False, use_rot=False)
    o.update(kw)
    return o


def test_registered_and_built_by_basicsr(hr_dir):
    assert DATASET_REGISTRY.get('SeGSRBicubicDataset') is SeGSRBicubicDataset
    ds = build_dataset(opt(hr_dir))
    assert len(ds) == len(SIZES)
    assert set(ds[0]) == {'lq', 'gt', 'lq_path', 'gt_path'}


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_val_lr_equals_prepared_lr_file(hr_dir, tmp_path, scale):
    """One HR copy serves every scale, and the on-the-fly LR is bit-identical to make_bicubic.py's LR file."""
    prep.make_bicubic(hr_dir, tmp_path, [scale], {})
    ds = SeGSRBicubicDataset(opt(hr_dir, scale=scale))
    for i, (h, w) in enumerate(SIZES):
        item = ds[i]
        name = f'img_{i}.png'
        assert item['gt_path'].endswith(name) and item['lq_path'] == item['gt_path']
        gt, lq = tensor2img(item['gt']), tensor2img(item['lq'])
        assert gt.shape == (h // scale * scale, w // scale * scale, 3)
        assert lq.shape == (h // scale, w // scale, 3)
        assert np.array_equal(gt, cv2.imread(str(tmp_path / f'HR_x{scale}' / name)))
        assert np.array_equal(lq, cv2.imread(str(tmp_path / f'LR_x{scale}' / name)))


def test_lmdb_and_meta_info_give_the_same_samples(hr_dir, tmp_path):
    prep.make_lmdb([(hr_dir, tmp_path / 'HR.lmdb')], {})
    folder = SeGSRBicubicDataset(opt(hr_dir))
    lmdb = SeGSRBicubicDataset(opt(tmp_path / 'HR.lmdb', io_backend=dict(type='lmdb')))
    meta = tmp_path / 'meta.txt'
    meta.write_text('img_2.png (70,123,3)\nimg_0.png (96,96,3)\n')
    listed = SeGSRBicubicDataset(opt(hr_dir, meta_info_file=str(meta)))
    assert len(lmdb) == len(folder) and len(listed) == 2
    assert lmdb[1]['gt_path'] == 'img_1'
    for a, b in [(folder[1], lmdb[1]), (folder[2], listed[0]), (folder[0], listed[1])]:
        assert (a['gt'] == b['gt']).all() and (a['lq'] == b['lq']).all()


def test_train_patches_are_aligned_crops(hr_dir):
    """A training pair is a gt_size crop of the mod-cropped HR and the matching crop of the full-image LR."""
    ds = SeGSRBicubicDataset(opt(hr_dir, phase='train', scale=3))
    full = SeGSRBicubicDataset(opt(hr_dir, scale=3))
    for i in range(len(ds)):
        item = ds[i]
        gt, lq = tensor2img(item['gt']), tensor2img(item['lq'])
        assert gt.shape == (48, 48, 3) and lq.shape == (16, 16, 3)
        full_gt, full_lq = tensor2img(full[i]['gt']), tensor2img(full[i]['lq'])
        hits = [(y, x) for y in range(full_lq.shape[0] - 15) for x in range(full_lq.shape[1] - 15)
                if np.array_equal(full_lq[y:y + 16, x:x + 16], lq)]
        assert hits, 'LR patch is not a crop of the whole-image LR'
        assert any(np.array_equal(full_gt[3 * y:3 * y + 48, 3 * x:3 * x + 48], gt) for y, x in hits)


def test_augmentation_flips_and_rotates_both(hr_dir):
    import random
    ds = SeGSRBicubicDataset(opt(hr_dir, phase='train', use_hflip=True, use_rot=True, gt_size=96))
    plain = tensor2img(SeGSRBicubicDataset(opt(hr_dir))[0]['gt'])  # 96x96: the crop is the whole image
    candidates = [np.rot90(f, k) for f in (plain, plain[:, ::-1]) for k in range(4)]
    seen = set()
    for seed in range(12):
        random.seed(seed)
        item = ds[0]
        gt, lq = tensor2img(item['gt']), tensor2img(item['lq'])
        match = [k for k, v in enumerate(candidates) if np.array_equal(v, gt)]
        assert match, 'gt is not a flip/rotation of the HR'
        seen.add(match[0])
        assert np.array_equal(lq, prep.bicubic_lr(gt, 4))  # the same transform was applied to the LR
    assert len(seen) > 2
    # partial crops of every image with flips on (BasicSR flips in place: arrays must be contiguous)
    ds = SeGSRBicubicDataset(opt(hr_dir, phase='train', use_hflip=True, use_rot=True, gt_size=48))
    for seed in range(6):
        random.seed(seed)
        assert all(tuple(ds[i]['lq'].shape) == (3, 12, 12) for i in range(len(ds)))


def test_image_smaller_than_patch_is_an_error(hr_dir):
    ds = SeGSRBicubicDataset(opt(hr_dir, phase='train', gt_size=100))
    with pytest.raises(prep.ImageError, match=r'img_0\.png: 96x96 is smaller than gt_size 100'):
        ds[0]


def test_input_rules_apply_in_the_dataset(tmp_path):
    root = tmp_path / 'HR'
    root.mkdir()
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    cv2.imwrite(str(root / 'a_gray.png'), gray)
    (root / 'notes.txt').write_text('not an image: ignored by the folder scan')
    ds = SeGSRBicubicDataset(opt(root))
    assert len(ds) == 1
    assert np.array_equal(tensor2img(ds[0]['gt']), np.repeat(gray[:, :, None], 3, 2))
    with pytest.raises(prep.ImageError, match=r'a_gray\.png: is grayscale'):
        SeGSRBicubicDataset(opt(root, gray='error'))[0]
    tifffile.imwrite(root / 'b_multi.tif', rng.integers(0, 256, (32, 32, 8), dtype=np.uint8),
                     photometric='minisblack', planarconfig='contig')
    ds = SeGSRBicubicDataset(opt(root))
    with pytest.raises(prep.ImageError, match=r'b_multi\.tif: has 8 bands.*bands: \[4, 3, 2\]'):
        ds[1]
    assert tuple(SeGSRBicubicDataset(opt(root, bands=[4, 3, 2]))[1]['gt'].shape) == (3, 32, 32)
    (root / 'c_broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 truncated')
    with pytest.raises(prep.ImageError, match=r'c_broken\.jpg: cannot be decoded'):
        SeGSRBicubicDataset(opt(root))[2]


def test_option_mistakes_are_errors(tmp_path, hr_dir):
    with pytest.raises(ValueError, match='no HR images'):
        SeGSRBicubicDataset(opt(tmp_path))
    with pytest.raises(ValueError, match='gt_size 50 is not a multiple of scale 4'):
        SeGSRBicubicDataset(opt(hr_dir, phase='train', gt_size=50))
    (tmp_path / 'HR.lmdb').mkdir()
    with pytest.raises(ValueError, match=r'HR\.lmdb: is an LMDB; set io_backend: \{type: lmdb\}'):
        SeGSRBicubicDataset(opt(tmp_path / 'HR.lmdb'))
