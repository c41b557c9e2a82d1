"""Inputs and outputs, checked before any work: dataset folders and their images, output folders, devices.

A run that is going to fail should fail in the first second, with one line, before a network is
built or a file is written. :func:`check_run` does that for ``segsr_basicsr.train`` / ``.test``
after the option pass (:func:`~segsr_basicsr.options.validate_options`); ``segsr-infer``, the
API and the ``datasets_prep`` scripts use :func:`check_writable`, :func:`check_file_outputs` and
:func:`check_device`. Images are listed and sized by :mod:`segsr_basicsr.io.images` (headers only).
"""
import os
import re
import uuid
from pathlib import Path

from segsr_basicsr.data.manifest import check_split_images
from segsr_basicsr.errors import DataError, OptionError
from segsr_basicsr.io.images import IMG_EXTS, image_size, readable_images

__all__ = ['check_writable', 'check_datasets', 'check_run', 'check_device', 'check_file_outputs']


# ----------------------------------------------------------------------------- outputs
def check_writable(folder, what='output folder'):
    """Prove that files can be created in ``folder`` (or in the existing folder it would be created in):
    create and delete a probe file. Refuses a path whose parent is a file, or a read-only place."""
    folder = Path(os.path.abspath(folder))
    probe_dir = folder
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise DataError(f'{what} {folder}: {probe_dir} is a file, not a folder; choose another path.')
    probe = probe_dir / f'.segsr-write-probe.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp'
    try:
        probe.write_bytes(b'')
        probe.unlink()
    except OSError as e:
        raise DataError(f'{what} {folder}: cannot write in {probe_dir} ({e.strerror}); choose a writable '
                        'folder or fix its permissions.') from None
    return folder


# ----------------------------------------------------------------------------- datasets
def _crop_need(opt, path):
    """Smallest GT side the configured metrics accept: PSNR needs a pixel left after ``crop_border`` on
    each side; SSIM's 11x11 Gaussian window needs 11."""
    need, why = 1, None
    metrics = ((opt.get('val') or {}).get('metrics') or {})
    for name, metric in metrics.items():
        if not isinstance(metric, dict):
            continue
        crop = metric.get('crop_border', 0)  # an integer >= 0 (options.check_val)
        side = 2 * crop + (11 if 'ssim' in str(metric.get('type', '')).lower() else 1)
        if side > need:
            need, why = side, f'val:metrics:{name} (crop_border {crop})'
    return need, why


def check_datasets(opt, path, is_train):
    """List and header-read every input of every folder dataset; check GT/LQ pairing by name and count,
    ``LQ * scale == GT``, the training patch size and the metrics' minimum size, and that a split's images
    are the ones its manifest holds (by content)."""
    scale = opt.get('scale')
    need, need_why = _crop_need(opt, path)
    for phase, ds in (opt.get('datasets') or {}).items():
        where = f'datasets:{phase}'
        train = phase.split('_')[0] == 'train'
        if (ds.get('io_backend') or {}).get('type', 'disk') != 'disk' or ds.get('meta_info_file'):
            continue
        gt_size = int(ds['gt_size']) if ds.get('gt_size') else None
        dtype = ds.get('type')
        paired = dtype == 'PairedImageDataset'
        folders = {k: ds[k] for k in ('dataroot_gt', 'dataroot_lq') if isinstance(ds.get(k), str)}
        sizes = {}
        for key, folder in folders.items():
            # BasicSR's folder datasets take every file of the folder (PairedImageDataset) or every image
            names = readable_images(folder, IMG_EXTS, all_files=paired)
            if not names:
                raise DataError(f'{path}: {where}:{key} = {folder}: no images in it.')
            others = [n for n in names if not n.lower().endswith(IMG_EXTS)]
            if others:
                raise DataError(f'{path}: {where}:{key} = {folder}: {others[0]} is not an image ({len(others)} such '
                                'file(s)); BasicSR reads every file there: move it out.')
            sizes[key] = {n: image_size(Path(folder) / n) for n in names}
        check_split_images(folders.values(), f'{path}: {where}')
        if paired and len(sizes) == 2:
            _check_pairs(sizes, folders, ds, f'{path}: {where}', scale, train, gt_size)
        if not train and 'dataroot_gt' in sizes:
            for name, (w, h) in sizes['dataroot_gt'].items():
                gw, gh = (w - w % scale, h - h % scale) if scale else (w, h)
                if min(gw, gh) < need:
                    raise DataError(f'{Path(folders["dataroot_gt"]) / name}: {w}x{h} is too small for {need_why}: '
                                    f'needs at least {need}x{need}. Lower crop_border or remove the image.')
        if train and dtype == 'SeGSRBicubicDataset' and gt_size:
            for name, (w, h) in sizes.get('dataroot_gt', {}).items():
                if min(w, h) < gt_size:
                    raise DataError(f'{Path(folders["dataroot_gt"]) / name}: {w}x{h} is smaller than {where}:gt_size '
                                    f'{gt_size}; lower gt_size or remove the image.')


def _check_pairs(sizes, folders, ds, where, scale, train, gt_size):
    """``where``: 'OPTION_FILE: datasets:PHASE', the start of every message."""
    gt, lq = sizes['dataroot_gt'], sizes['dataroot_lq']
    tmpl = ds.get('filename_tmpl', '{}')
    expected = {}
    for name in gt:
        stem, ext = os.path.splitext(name)
        try:
            expected[name] = f'{str(tmpl).format(stem)}{ext}'
        except (IndexError, KeyError, ValueError):
            raise OptionError(f'{where}:filename_tmpl {tmpl!r} must hold one {{}} for the GT name, e.g. '
                              "'{}_x4'.") from None
    missing = [n for n in gt if expected[n] not in lq]
    if missing or len(gt) != len(lq):
        extra = sorted(set(lq) - set(expected.values()))
        detail = (f'{Path(folders["dataroot_lq"]) / expected[missing[0]]} is missing (the pair of '
                  f'{Path(folders["dataroot_gt"]) / missing[0]})') if missing else \
            f'{Path(folders["dataroot_lq"]) / extra[0]} has no GT'
        raise DataError(f'{where}: dataroot_gt has {len(gt)} images and dataroot_lq {len(lq)}; {detail}. '
                        'GT and LQ files must pair by name (filename_tmpl).')
    lq_patch = gt_size // scale if train and gt_size else 0
    for name in gt:
        (gw, gh), (lw, lh) = gt[name], lq[expected[name]]
        lq_path = Path(folders['dataroot_lq']) / expected[name]
        ok = (gw, gh) == (lw * scale, lh * scale) if train else (gw // scale, gh // scale) == (lw, lh)
        if not ok:
            rule = 'equal' if train else 'be'
            raise DataError(f'{lq_path}: LQ {lw}x{lh} x{scale} = {lw * scale}x{lh * scale} does not match its GT '
                            f'{gw}x{gh} ({Path(folders["dataroot_gt"]) / name}); the GT must {rule} LQ x scale '
                            '(check scale, or remake the LQ with datasets_prep/make_bicubic.py).')
        if min(lw, lh) < lq_patch:
            raise DataError(f'{lq_path}: LQ {lw}x{lh} is smaller than the training patch {lq_patch}x{lq_patch} '
                            f'({where}:gt_size {gt_size} / scale {scale}); lower gt_size or remove the image.')


def check_run(opt, path, is_train):
    """The whole pass for train/test, after :func:`~segsr_basicsr.options.validate_options`:
    option cross-checks, every dataset input, and that the outputs can be written (./experiments,
    ./tb_logger, ./results under the current directory, BasicSR's layout)."""
    check_datasets(opt, path, is_train)
    check_writable(os.path.join(os.getcwd(), 'experiments' if is_train else 'results'), 'output folder')
    if not is_train:
        return []
    return [w for phase, ds in (opt.get('datasets') or {}).items() if phase.split('_')[0] == 'val'
            for w in [validation_is_test(ds.get('dataroot_gt'), f'{path}: datasets:{phase}')] if w]


def validation_is_test(folder, where):
    """A warning when a validation folder is the test split (``.../test/...``), or shares images (by content)
    with the test split beside it (``.../val/HR_x4`` against ``.../test/HR_x4``): checkpoints would then be
    chosen on test data. None when neither is the case or there is no test split to compare with."""
    if not isinstance(folder, str) or not os.path.isdir(folder):
        return None
    parts = Path(os.path.abspath(folder)).parts
    if 'test' in parts:
        return (f'{where}:dataroot_gt {folder} is the test split: checkpoints (and net_g_best.pth) would be '
                'chosen on test data; validate on the val split (datasets_prep/split_dataset.py makes one).')
    if 'val' not in parts:
        return None
    i = len(parts) - 1 - parts[::-1].index('val')
    test = Path(*parts[:i], 'test', *parts[i + 1:])
    if not test.is_dir():
        return None
    from segsr_basicsr.io.digest import file_sha256
    val_hashes = {file_sha256(Path(folder) / n) for n in readable_images(folder, IMG_EXTS)}
    shared = sum(file_sha256(test / n) in val_hashes for n in readable_images(test, IMG_EXTS))
    if not shared:
        return None
    return (f'{where}:dataroot_gt {folder} shares {shared} image(s) (same content) with the test split {test}: '
            'those numbers are not independent of the test set; re-split (datasets_prep/split_dataset.py).')


# ----------------------------------------------------------------------------- devices
_DEVICE = re.compile(r'^(cpu|cuda(:\d+)?)$')


def check_device(name, where='--device'):
    """'auto' | None | 'cpu' | 'cuda' | 'cuda:N' | torch.device -> torch.device, or one line saying what exists."""
    import torch
    if isinstance(name, torch.device):
        return name
    if name in (None, 'auto'):
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    text = str(name).strip().lower()
    if not _DEVICE.match(text):
        raise OptionError(f'{where} {name!r} is not a device name: use cpu, cuda, cuda:N or auto.')
    if text.startswith('cuda'):
        if not torch.cuda.is_available():
            raise OptionError(f'{where} {name}: CUDA is not available here; use {where} cpu (or auto).')
        index, count = int(text.partition(':')[2] or 0), torch.cuda.device_count()
        if index >= count:
            raise OptionError(f'{where} {name}: this machine has {count} CUDA device(s) (cuda:0 to '
                              f'cuda:{count - 1}); pick one of them.')
    return torch.device(text)


# ----------------------------------------------------------------------------- one input, its outputs
def check_file_outputs(src, outputs, what='output'):
    """``src`` is an existing file and no output is it, or lies under a file, or repeats another output.
    Raised before anything is read or written, so an input is never overwritten."""
    src = Path(src)
    if not src.is_file():
        raise DataError(f'{src}: ' + ('is a folder, not a file.' if src.is_dir() else 'no such file.'))
    seen = {src.resolve(): f'the input {src}'}
    for out in map(Path, outputs):
        key = out.resolve()
        if key in seen:
            raise DataError(f'{what} {out} is {seen[key]}; refusing to overwrite it. Choose another {what} path.')
        seen[key] = f'also the {what} {out}'
        if out.is_dir():
            raise DataError(f'{what} {out} is a folder; name a file in it.')
        check_writable(out.parent, f'{what} {out}: folder')


def check_apart(output, inputs, what='--out'):
    """An output folder must not be, or lie inside, an input folder (its files would become inputs of the next
    run, or be mistaken for data), nor contain one."""
    out = Path(os.path.abspath(output))
    for src in map(lambda p: Path(os.path.abspath(p)), inputs):
        if out == src or src in out.parents or out in src.parents:
            where = 'is' if out == src else ('is inside' if src in out.parents else 'contains')
            raise DataError(f'{what} {output} {where} the input {src}; write the output to a folder of its own '
                            f'(e.g. beside the input: {src.parent / (src.name + "_out")}).')
