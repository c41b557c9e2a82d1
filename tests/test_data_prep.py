"""datasets_prep/ scripts end to end, as a user runs them (subprocesses), on a small class-per-folder tree.

The tree is cut from the real images in ../shared/data/rs_samples when present (copied into
tmp_path, never into the repo), else drawn with the synthetic scene generator.
"""
import contextlib
import hashlib
import io
import os
import runpy
import subprocess
import sys
from types import SimpleNamespace
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
import yaml

import segsr_basicsr  # noqa: F401,I001  (compat first, then registers everything)
from basicsr.utils import tensor2img
from basicsr.utils.matlab_functions import imresize

from segsr_basicsr.data import prep
from segsr_basicsr.data.synthetic import aerial_scene
from tiny_configs import RS_SAMPLES

REPO = Path(__file__).resolve().parents[1]
PREP = REPO / 'datasets_prep'
#: (class, file-name pattern, extension, count, rsscn7 prefix): UCMerced-, AID- and SIRI-WHU-style names
CLASSES = [('field', 'field{:02d}', '.tif', 10, 'b'), ('forest', 'forest_{}', '.jpg', 7, 'e'),
           ('river', '{}', '.tif', 12, 'd')]
#: crop sizes (h, w): 96 divides by 2/3/4, the others need mod-crops
SIZES = [(96, 96), (100, 104), (97, 103)]


def run(script, *args, cwd=None, check=True):
    """Run a prep script as a user does: a fresh Python process."""
    r = subprocess.run([sys.executable, str(PREP / script), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                       timeout=600)
    if check and r.returncode:
        raise AssertionError(f'{script} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}')
    return r


def call(script, *args, check=True):
    """Run the same script file in this process (as __main__): saves the ~3 s torch import of a subprocess."""
    out, err, code = io.StringIO(), io.StringIO(), 0
    argv = sys.argv
    sys.argv = [str(PREP / script), *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(PREP / script), run_name='__main__')
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
    r = SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())
    if check and r.returncode:
        raise AssertionError(f'{script} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}')
    return r


def build_class_tree(root):
    """Class-per-folder tree of small tiles (mixed TIFF / JPEG, some sizes not multiples of 2/3/4)."""
    root = Path(root)
    rs = RS_SAMPLES / 'rsscn7_test30'
    for c, (cls, pattern, ext, count, prefix) in enumerate(CLASSES):
        (root / cls).mkdir(parents=True)
        sources = sorted(rs.glob(f'{prefix}*.jpg')) if rs.is_dir() else []
        for i in range(count):
            h, w = SIZES[i % len(SIZES)]
            if sources:
                big = cv2.imread(str(sources[i % len(sources)]))
                y, x = 37 * (i // len(sources)) % (big.shape[0] - h), 53 * (i // len(sources)) % (big.shape[1] - w)
                tile = big[y:y + h, x:x + w]
            else:
                tile = aerial_scene(h, w, [c, i])
            path = root / cls / (pattern.format(i + 1) + ext)
            if ext == '.tif':
                tifffile.imwrite(path, np.ascontiguousarray(tile[:, :, ::-1]), photometric='rgb')
            else:
                cv2.imwrite(str(path), tile, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return root


def tree_digest(root):
    """{relative path: sha256} of every file under root."""
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob('*')) if p.is_file()}


def prepare(src, out, run=run):
    """The README pipeline: split, HR/LR for x2/x3/x4, LMDB of the x4 training pairs."""
    run('split_dataset.py', '--src', src, '--out', out, '--ratios', 8, 1, 1, '--seed', 0)
    run('make_bicubic.py', '--input', *[out / s / 'HR' for s in ('train', 'val', 'test')], '--scales', 2, 3, 4)
    run('make_lmdb.py', out / 'train' / 'HR_x4', out / 'train' / 'LR_x4')
    return out


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp('prep')
    src = build_class_tree(base / 'src')
    return src, prepare(src, base / 'out')


def read_list(path):
    return Path(path).read_text().split()


# ----------------------------------------------------------------------------- split
def test_split_counts_per_class_and_no_overlap(prepared):
    src, out = prepared
    lists = {s: read_list(out / 'splits' / f'{s}.txt') for s in ('train', 'val', 'test')}
    for cls, _, _, n, _ in CLASSES:
        per = {s: sum(1 for f in v if f.startswith(cls + '/')) for s, v in lists.items()}
        n_val = n_test = int(np.floor(n * 0.1 + 0.5))
        assert per == {'train': n - n_val - n_test, 'val': n_val, 'test': n_test}, cls
    everything = [f for v in lists.values() for f in v]
    assert len(everything) == len(set(everything)) == sum(c[3] for c in CLASSES)
    assert set(everything) == {f'{p.parent.name}/{p.name}' for p in src.rglob('*.*')}
    # one PNG per listed file, named by output_name; pixels = the source file's pixels
    for split, files in lists.items():
        names = sorted(p.stem for p in (out / split / 'HR').iterdir())
        assert names == sorted(prep.output_name(f) for f in files)
    # SIRI-WHU-style '1.tif' gets its class as prefix; UCMerced/AID-style names keep their stem
    all_names = {prep.output_name(f) for v in lists.values() for f in v}
    assert {n for n in all_names if n.startswith('river')} == {f'river_{i}' for i in range(1, 13)}
    assert {'field01', 'field10', 'forest_1', 'forest_7'} <= all_names
    f = lists['train'][0]
    png = cv2.imread(str(out / 'train' / 'HR' / f'{prep.output_name(f)}.png'))
    assert np.array_equal(png, prep.read_image(src / f))


def test_split_seed_matters_and_split_from_reproduces(prepared, tmp_path):
    src, out = prepared
    call('split_dataset.py', '--src', src, '--out', tmp_path / 'seed1', '--seed', 1, '--lists-only')
    assert read_list(tmp_path / 'seed1' / 'splits' / 'train.txt') != read_list(out / 'splits' / 'train.txt')
    assert not (tmp_path / 'seed1' / 'train').exists()  # --lists-only
    # a shared split (our own lists, one entry as a bare file name) gives the same split
    shared = tmp_path / 'shared'
    shared.mkdir()
    for s in ('train', 'val', 'test'):
        lines = read_list(out / 'splits' / f'{s}.txt')
        if s == 'val':
            lines[0] = lines[0].split('/')[1] + '   # bare name, unique'
        (shared / f'{s}.txt').write_text('\n'.join(lines) + '\n')
    call('split_dataset.py', '--src', src, '--out', tmp_path / 'again', '--split-from', shared, '--lists-only')
    for s in ('train', 'val', 'test'):
        assert read_list(tmp_path / 'again' / 'splits' / f'{s}.txt') == read_list(out / 'splits' / f'{s}.txt')
    # a name listed twice or unknown is an error that names the list file and line
    (shared / 'test.txt').write_text((shared / 'test.txt').read_text() + 'river/nope.tif\n')
    r = call('split_dataset.py', '--src', src, '--out', tmp_path / 'bad', '--split-from', shared, check=False)
    assert r.returncode == 2 and 'test.txt:' in r.stderr and 'nope.tif' in r.stderr and 'not in --src' in r.stderr
    assert not (tmp_path / 'bad').exists()


# ----------------------------------------------------------------------------- HR / LR
@pytest.mark.parametrize('scale', [2, 3, 4])
def test_hr_lr_sizes_and_bicubic_matches_basicsr(prepared, scale):
    src, out = prepared
    for split in ('train', 'val', 'test'):
        full = sorted((out / split / 'HR').glob('*.png'))
        assert [p.name for p in sorted((out / split / f'LR_x{scale}').glob('*.png'))] == [p.name for p in full]
        for p in full:
            img = cv2.imread(str(p))
            hr = cv2.imread(str(out / split / f'HR_x{scale}' / p.name))
            lr = cv2.imread(str(out / split / f'LR_x{scale}' / p.name))
            h, w = img.shape[0] // scale * scale, img.shape[1] // scale * scale
            assert hr.shape == (h, w, 3) and lr.shape == (h // scale, w // scale, 3)
            assert np.array_equal(hr, img[:h, :w])
    # LR == BasicSR's MATLAB imresize on the tensor path, rounded like BasicSR's tensor2img
    p = sorted((out / 'train' / f'HR_x{scale}').glob('*.png'))[-1]
    hr = cv2.imread(str(p))
    t = torch.from_numpy(hr[:, :, ::-1].transpose(2, 0, 1).copy()).float() / 255.
    expected = tensor2img(imresize(t, 1 / scale))  # RGB tensor -> BGR uint8, round + clip
    assert np.array_equal(cv2.imread(str(out / 'train' / f'LR_x{scale}' / p.name)), expected)


def test_rerun_is_byte_identical(prepared, tmp_path):
    src, out = prepared
    again = prepare(src, tmp_path / 'out', run=call)
    first, second = tree_digest(out), tree_digest(again)
    assert 'train/HR_x4.lmdb/data.mdb' in first and 'splits/split.json' in first
    assert first == second


# ----------------------------------------------------------------------------- LMDB
def test_lmdb_readable_by_paired_image_dataset(prepared):
    from basicsr.data.paired_image_dataset import PairedImageDataset
    _, out = prepared
    meta = (out / 'train' / 'HR_x4.lmdb' / 'meta_info.txt').read_text().splitlines()
    names = sorted(p.stem for p in (out / 'train' / 'HR_x4').glob('*.png'))
    assert [m.split('.')[0] for m in meta] == names
    ds = PairedImageDataset(dict(dataroot_gt=str(out / 'train' / 'HR_x4.lmdb'),
                                 dataroot_lq=str(out / 'train' / 'LR_x4.lmdb'), io_backend=dict(type='lmdb'),
                                 scale=4, phase='val'))
    assert len(ds) == len(names)
    for i in (0, len(ds) - 1):
        item = ds[i]
        gt = cv2.imread(str(out / 'train' / 'HR_x4' / f'{item["gt_path"]}.png'))
        lq = cv2.imread(str(out / 'train' / 'LR_x4' / f'{item["lq_path"]}.png'))
        assert np.array_equal(tensor2img(item['gt']), gt) and np.array_equal(tensor2img(item['lq']), lq)
        h, w = gt.shape[:2]
        assert meta[names.index(item['gt_path'])] == f'{item["gt_path"]}.png ({h},{w},3) 1'


def test_lmdb_refuses_to_overwrite(prepared):
    _, out = prepared
    before = tree_digest(out / 'train' / 'HR_x4.lmdb')
    r = call('make_lmdb.py', out / 'train' / 'HR_x4', out / 'train' / 'LR_x4', check=False)
    assert r.returncode == 2
    assert 'refusing to overwrite' in r.stderr and 'HR_x4.lmdb' in r.stderr
    assert tree_digest(out / 'train' / 'HR_x4.lmdb') == before
    # the other prep scripts refuse too, before doing any work
    r = call('make_bicubic.py', '--input', out / 'train' / 'HR', '--out', out / 'train', '--scales', 4, check=False)
    assert r.returncode == 2 and 'refusing to overwrite' in r.stderr
    assert not list((out / 'train').glob('.*.tmp*'))


def test_unpaired_folders_are_refused(prepared, tmp_path):
    _, out = prepared
    r = call('make_lmdb.py', out / 'train' / 'HR_x4', out / 'val' / 'LR_x4', '--lmdb', tmp_path / 'x.lmdb',
            check=False)
    assert r.returncode == 2 and '--lmdb takes one folder' in r.stderr
    lr = tmp_path / 'LR_x4'
    lr.mkdir()
    for p in sorted((out / 'train' / 'LR_x4').glob('*.png'))[1:]:
        (lr / p.name).write_bytes(p.read_bytes())
    hr = tmp_path / 'HR_x4'
    hr.symlink_to(out / 'train' / 'HR_x4')
    r = call('make_lmdb.py', hr, lr, check=False)
    assert r.returncode == 2 and 'do not hold the same image names' in r.stderr
    assert not (tmp_path / 'HR_x4.lmdb').exists()


# ----------------------------------------------------------------------------- sub-images
def test_extract_subimages(tmp_path):
    src = tmp_path / 'scenes'
    src.mkdir()
    scene = aerial_scene(100, 130, 7)
    prep.write_png(src / 'scene_a.png', scene)
    call('extract_subimages.py', '--input', src, '--out', tmp_path / 'sub', '--crop-size', 48, '--step', 40)
    ys, xs = [0, 40, 52], [0, 40, 80, 82]  # regular steps + one tile flush with the border
    tiles = sorted((tmp_path / 'sub').glob('*.png'))
    assert [t.name for t in tiles] == [f'scene_a_s{i:03d}.png' for i in range(1, len(ys) * len(xs) + 1)]
    for t, (y, x) in zip(tiles, [(y, x) for y in ys for x in xs]):
        assert np.array_equal(cv2.imread(str(t)), scene[y:y + 48, x:x + 48])
    r = call('extract_subimages.py', '--input', src, '--out', tmp_path / 'sub2', '--crop-size', 128, check=False)
    assert r.returncode == 2 and 'scene_a.png' in r.stderr and 'smaller than --crop-size 128' in r.stderr
    assert not (tmp_path / 'sub2').exists()
    # a flat folder (no class folders) splits as one class
    call('split_dataset.py', '--src', tmp_path / 'sub', '--out', tmp_path / 'flat', '--ratios', 8, 1, 1)
    lists = {s: read_list(tmp_path / 'flat' / 'splits' / f'{s}.txt') for s in ('train', 'val', 'test')}
    assert {s: len(v) for s, v in lists.items()} == {'train': 10, 'val': 1, 'test': 1}
    assert sorted(os.listdir(tmp_path / 'flat' / 'val' / 'HR')) == [lists['val'][0]]
    # two files that would give the same output name are refused, not silently overwritten
    cv2.imwrite(str(src / 'scene_a.tif'), scene)
    r = call('make_bicubic.py', '--input', src, '--out', tmp_path / 'bic', check=False)
    assert r.returncode == 2 and "same output name ['scene_a']" in r.stderr
    # a name that cannot be a BasicSR LMDB key (BasicSR cuts keys at the first '.') is refused up front
    (src / 'scene_a.tif').rename(src / 'scene.v2.tif')
    r = call('make_bicubic.py', '--input', src, '--out', tmp_path / 'bic', check=False)
    assert r.returncode == 2 and "scene.v2.tif: name 'scene.v2' must use only" in r.stderr
    assert not (tmp_path / 'bic').exists()


# ----------------------------------------------------------------------------- demo data
def test_demo_dataset_deterministic_and_layout(tmp_path):
    run('make_demo_dataset.py', '--out', tmp_path / 'a')
    r = call('make_demo_dataset.py', '--out', tmp_path / 'b')
    assert 'train/HR/' in r.stdout and 'scene/' in r.stdout  # the layout is printed
    assert tree_digest(tmp_path / 'a') == tree_digest(tmp_path / 'b')
    demo = tmp_path / 'a'
    assert len(list((demo / 'train' / 'HR').glob('*.png'))) == 24
    assert cv2.imread(str(demo / 'train' / 'HR' / 'demo_train_000.png')).shape == (128, 128, 3)
    lr = cv2.imread(str(demo / 'scene' / 'demo_scene_LR.png'))
    assert lr.shape == (150, 200, 3) and lr.shape[0] % 16 and lr.shape[1] % 16
    for hr_path in sorted((demo / 'val' / 'HR').glob('*.png')):
        hr = cv2.imread(str(hr_path))
        assert 64 <= min(hr.shape[:2]) and max(hr.shape[:2]) <= 128
        assert np.array_equal(cv2.imread(str(demo / 'val' / 'LR_x4' / hr_path.name)), prep.bicubic_lr(hr, 4))
    # not flat colour: real texture to super-resolve
    assert cv2.Laplacian(cv2.imread(str(demo / 'train' / 'HR' / 'demo_train_000.png')), cv2.CV_64F).std() > 5
    # same recipe again: a no-op; another recipe on an existing folder: refused, nothing touched
    before = tree_digest(demo)
    assert 'nothing to do' in call('make_demo_dataset.py', '--out', demo).stdout
    r = call('make_demo_dataset.py', '--out', demo, '--seed', 3, check=False)
    assert r.returncode == 2 and 'refusing to overwrite' in r.stderr
    assert tree_digest(demo) == before


# ----------------------------------------------------------------------------- bad inputs
def _write(path, arr, **kw):
    if str(path).endswith('.tif'):
        tifffile.imwrite(path, arr, **kw)
    else:
        assert cv2.imwrite(str(path), arr)
    return path


def test_bad_inputs_error_messages(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)  # BGR
    d = tmp_path

    # grayscale: converted to 3 equal channels (with a note), or rejected when asked
    gray = _write(d / 'gray.png', rgb[:, :, 0])
    out = prep.read_image(gray)
    assert out.shape == (20, 24, 3) and all(np.array_equal(out[:, :, c], rgb[:, :, 0]) for c in range(3))
    with pytest.raises(prep.ImageError, match=r'gray\.png: is grayscale.*--gray error.*Use convert'):
        prep.read_image(gray, gray='error')

    # RGBA: alpha dropped when fully opaque, error when not
    bgra = np.concatenate([rgb, np.full((20, 24, 1), 255, np.uint8)], 2)
    assert np.array_equal(prep.read_image(_write(d / 'opaque.png', bgra)), rgb)
    bgra[3, 4, 3] = 10
    with pytest.raises(prep.ImageError, match=r'alpha\.png: has an alpha channel with 1 transparent pixel'):
        prep.read_image(_write(d / 'alpha.png', bgra))

    # 16-bit: error, or the explicit linear conversion
    deep = (rgb.astype(np.uint16) * 257)
    with pytest.raises(prep.ImageError, match=r'deep\.png: is 16-bit.*--max-value'):
        prep.read_image(_write(d / 'deep.png', deep))
    assert np.array_equal(prep.read_image(d / 'deep.png', max_value=65535), rgb)
    rgb12 = (rgb[:, :, ::-1].astype(np.uint32) * 4095 // 255).astype(np.uint16)
    twelve = _write(d / 'twelve.tif', rgb12, photometric='rgb')
    assert np.abs(prep.read_image(twelve, max_value=4095).astype(int) - rgb).max() <= 1

    # multi-band TIFF (> 4 bands, and a 4-band TIFF whose 4th band is not alpha): rejected, with how to pick bands
    bands = rng.integers(0, 256, (20, 24, 6), dtype=np.uint8)
    multi = _write(d / 'multi.tif', bands, photometric='minisblack', planarconfig='contig')
    with pytest.raises(prep.ImageError, match=r'multi\.tif: has 6 bands.*--bands R G B'):
        prep.read_image(multi)
    assert np.array_equal(prep.read_image(multi, bands=[3, 2, 1]), bands[:, :, :3])  # R,G,B=3,2,1 -> BGR=1,2,3
    planar = _write(d / 'planar.tif', np.moveaxis(bands, 2, 0), photometric='minisblack', planarconfig='separate')
    assert np.array_equal(prep.read_image(planar, bands=[1, 2, 3]), bands[:, :, 2::-1])
    nir = _write(d / 'rgbnir.tif', bands[:, :, :4], photometric='minisblack', planarconfig='contig')
    with pytest.raises(prep.ImageError, match=r'rgbnir\.tif: has 4 bands'):
        prep.read_image(nir)
    with pytest.raises(prep.ImageError, match=r'multi\.tif: bands=\[7, 2, 1\] does not pick 3 of its 6 bands'):
        prep.read_image(multi, bands=[7, 2, 1])

    # files that do not decode
    broken = d / 'broken.png'
    broken.write_bytes(_write(d / 'ok.png', rgb).read_bytes()[:60])
    with pytest.raises(prep.ImageError, match=r'broken\.png: cannot be decoded'):
        prep.read_image(broken)
    (d / 'empty.jpg').write_bytes(b'')
    with pytest.raises(prep.ImageError, match=r'empty\.jpg: file is empty'):
        prep.read_image(d / 'empty.jpg')
    (d / 'fake.tif').write_bytes(b'II*\x00' + b'\x00' * 40)
    with pytest.raises(prep.ImageError, match=r'fake\.tif: cannot be decoded'):
        prep.read_image(d / 'fake.tif')


def test_bad_input_stops_script_cleanly(tmp_path):
    """A user's script run hits a bad file: exit 2, one line naming it and the fix, no output left behind."""
    src = tmp_path / 'src' / 'cls'
    src.mkdir(parents=True)
    for i in range(4):
        prep.write_png(src / f'cls{i}.png', aerial_scene(32, 32, i))
    tifffile.imwrite(src / 'cls9.tif', np.zeros((32, 32, 5), np.uint8), photometric='minisblack',
                     planarconfig='contig')
    r = run('split_dataset.py', '--src', src.parent, '--out', tmp_path / 'out', '--ratios', 1, 0, 0, check=False)
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    assert 'cls9.tif: has 5 bands' in r.stderr and '--bands' in r.stderr
    assert not (tmp_path / 'out').exists()  # not even the empty folders it would have made
    r = call('split_dataset.py', '--src', src.parent, '--out', tmp_path / 'out', '--ratios', 1, 0, 0,
            '--bands', 1, 2, 3)
    assert sorted(os.listdir(tmp_path / 'out' / 'train' / 'HR')) == [f'cls{i}.png' for i in (0, 1, 2, 3, 9)]
    assert sorted(os.listdir(tmp_path / 'out')) == ['splits', 'train']  # empty val/test are not written


# ----------------------------------------------------------------------------- training on it
def test_train_a_few_iterations_on_the_lmdb(prepared, tmp_path):
    """`python -m segsr_basicsr.train` on the LMDB pairs (PairedImageDataset), validating with
    SeGSRBicubicDataset on the val HR folder (LR made on the fly)."""
    from train_opts import tiny_network
    _, out = prepared
    opt = dict(
        name='prep_lmdb_train', model_type='SRModel', scale=4, num_gpu=0, manual_seed=0,
        datasets=dict(
            train=dict(name='train', type='PairedImageDataset', dataroot_gt=str(out / 'train' / 'HR_x4.lmdb'),
                       dataroot_lq=str(out / 'train' / 'LR_x4.lmdb'), io_backend=dict(type='lmdb'), gt_size=32,
                       use_hflip=True, use_rot=True, use_shuffle=True, num_worker_per_gpu=0, batch_size_per_gpu=2,
                       dataset_enlarge_ratio=1, prefetch_mode=None),
            val=dict(name='val', type='SeGSRBicubicDataset', dataroot_gt=str(out / 'val' / 'HR'),
                     io_backend=dict(type='disk'))),
        network_g=tiny_network(),
        path=dict(pretrain_network_g=None, strict_load_g=True, resume_state=None),
        train=dict(optim_g=dict(type='Adam', lr=1e-3, betas=[0.9, 0.99]),
                   scheduler=dict(type='MultiStepLR', milestones=[100], gamma=0.5), total_iter=3, warmup_iter=-1,
                   pixel_opt=dict(type='L1Loss', loss_weight=1.0, reduction='mean')),
        val=dict(val_freq=3, save_img=False, metrics=dict(psnr=dict(type='calculate_psnr', crop_border=4,
                                                                     test_y_channel=True))),
        logger=dict(print_freq=1, save_checkpoint_freq=3, use_tb_logger=False))
    opt_file = tmp_path / 'train.yml'
    opt_file.write_text(yaml.safe_dump(opt))
    r = subprocess.run([sys.executable, '-m', 'segsr_basicsr.train', '-opt', str(opt_file)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log
    assert (tmp_path / 'experiments' / 'prep_lmdb_train' / 'models' / 'net_g_3.pth').is_file()
    logs = ''.join(p.read_text() for p in (tmp_path / 'experiments' / 'prep_lmdb_train').glob('*.log'))
    assert 'iter:      3' in logs.replace(',', '') or 'iter:3' in logs.replace(' ', '')
    psnr = [line for line in logs.splitlines() if '# psnr:' in line]
    assert psnr and float(psnr[-1].split('# psnr:')[1].split()[0]) > 5
