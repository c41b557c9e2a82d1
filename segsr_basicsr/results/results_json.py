"""A test run's numbers as data: ``results.json`` beside BasicSR's log, with what they were computed on.

Per dataset: the mean of every metric under its own name (``psnr_y``, ``psnr_rgb``, ...), the metric
options (channel and crop: which convention), the number of images, the per-image values, the image
folders and one SHA-256 digest of the image pairs actually scored, so a table can refuse to put side by
side numbers from different images. Per run: the checkpoint, its iteration, scale, tile and
self-ensemble settings. :mod:`segsr_basicsr.report` turns results files into tables.
"""
import hashlib
import json
import re
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

from segsr_basicsr.io.atomic import atomic_write
from segsr_basicsr.io.digest import file_sha256

__all__ = ['RESULTS_NAME', 'file_sha256', 'pairs_digest', 'checkpoint_iter', 'write_results', 'read_results']

RESULTS_NAME = 'results.json'
_ITER = re.compile(r'_(\d+)\.(pth|safetensors)$')


def pairs_digest(pairs: Iterable[Tuple[str, Optional[str]]]) -> str:
    """One SHA-256 over the (name, GT content, LQ content) of every scored pair, in name order."""
    h = hashlib.sha256()
    for lq, gt in sorted(pairs, key=lambda p: Path(p[0]).name):
        h.update(Path(lq).name.encode() + b'\0' + file_sha256(lq).encode())
        h.update(b'\0' + (file_sha256(gt).encode() if gt else b'-') + b'\n')
    return h.hexdigest()


def checkpoint_iter(path) -> Optional[int]:
    """The training iteration of a checkpoint: from ``net_g_<iter>.pth``, the best record of
    ``net_g_best.pth``, or the iteration training wrote into it; None when nothing says."""
    if not path:
        return None
    m = _ITER.search(str(path))
    if m:
        return int(m.group(1))
    try:
        from segsr_basicsr.io.checkpoint import META_KEY, load_checkpoint
        ckpt = load_checkpoint(path)
    except Exception:  # noqa: BLE001 - an unreadable file has no iteration to report; the run reported it
        return None
    return (ckpt.get('segsr_best') or {}).get('iter') or (ckpt.get(META_KEY) or {}).get('iter')


def _run_entry(opt) -> dict:
    path_opt, val = opt.get('path') or {}, opt.get('val') or {}
    ckpt = path_opt.get('pretrain_network_g')
    return {'run': opt['name'], 'checkpoint': ckpt, 'iter': checkpoint_iter(ckpt),
            'param_key': path_opt.get('param_key_g', 'params'), 'scale': opt.get('scale'),
            'tile': val.get('tile'), 'self_ensemble': bool(val.get('self_ensemble', False)),
            'network': (opt.get('network_g') or {}).get('type'), 'datasets': {}}


def write_results(opt, dataset_opt, dataset_name, per_image, scored, out_dir, sr_images=None) -> Path:
    """Add ``dataset_name`` to ``out_dir/results.json`` (created for this run), atomically.

    ``per_image``: [(stem, {metric: value})]; ``scored``: [(lq_path, gt_path)] of the same images;
    ``sr_images``: {stem: SR image path} when the run saved them (``val.save_img``), for figures."""
    path = Path(out_dir) / RESULTS_NAME
    data = json.loads(path.read_text()) if path.is_file() else _run_entry(opt)
    metrics = {name: dict(m) for name, m in (opt['val'].get('metrics') or {}).items()}
    names = [m for m in metrics]
    per_image = [(str(stem), {m: float(v) for m, v in values.items()}) for stem, values in per_image]  # numpy -> JSON
    means = {m: sum(v[m] for _, v in per_image) / len(per_image) for m in names}
    data['datasets'][dataset_name] = {
        'metrics': means, 'metric_options': metrics, 'images': len(per_image),
        'digest': pairs_digest(scored), 'dataroot_gt': dataset_opt.get('dataroot_gt'),
        'dataroot_lq': dataset_opt.get('dataroot_lq'), 'pairs': [[lq, gt] for lq, gt in scored],
        'per_image': {stem: values for stem, values in per_image}, 'sr_images': dict(sr_images or {})}
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1, default=str) + '\n'),
                 durable=False)
    return path


def read_results(path) -> Dict:
    """A results.json, checked to be one (a one-line error naming the file otherwise)."""
    from segsr_basicsr.errors import DataError
    try:
        data = json.loads(Path(path).read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
        raise DataError(f'{path}: cannot be read as a results file ({e}); pass the results.json a test run '
                        'wrote (results/<name>/results.json) or its folder.') from None
    if not isinstance(data, dict) or not isinstance(data.get('datasets'), dict) or 'run' not in data:
        raise DataError(f'{path}: is not a results file of segsr_basicsr.test (no run/datasets entries).')
    scale = data.get('scale')
    if not isinstance(data['run'], str) or isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise DataError(f'{path}: its run {data["run"]!r} / scale {scale!r} are not a run name and a whole scale; '
                        'it is not a results file of this version of segsr_basicsr.test: run segsr-test again.')
    for name, entry in data['datasets'].items():
        problem = _dataset_entry_problem(entry)
        if problem:
            raise DataError(f'{path}: datasets:{name} {problem}; it is not a results file of this version of '
                            'segsr_basicsr.test: run segsr-test again to rewrite it.')
    return data


#: what every dataset entry of a results file holds, and the type the tables read it as
_ENTRY_TYPES = {'metrics': dict, 'metric_options': dict, 'images': int, 'digest': str, 'per_image': dict}


def _dataset_entry_problem(entry) -> Optional[str]:
    """Why a dataset entry is not one :func:`write_results` writes (None when it is)."""
    if not isinstance(entry, dict):
        return f'is {type(entry).__name__}, not an entry'
    for key, kind in _ENTRY_TYPES.items():
        if not isinstance(entry.get(key), kind) or isinstance(entry.get(key), bool):
            return f'has no {key} {kind.__name__}'
    bad = [m for m, v in entry['metrics'].items()
           if isinstance(v, bool) or not isinstance(v, (int, float)) or m not in entry['metric_options']]
    if bad:
        return f'metrics:{bad[0]} is not a number with its metric options'
    if not all(isinstance(o, dict) for o in entry['metric_options'].values()):
        return 'metric_options holds something other than sections'
    for stem, values in entry['per_image'].items():
        if not isinstance(values, dict):
            return f'per_image:{stem} is not a mapping of metric values'
    pairs = entry.get('pairs', [])
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        return 'pairs is not a list of [LQ, GT] paths'
    if not isinstance(entry.get('sr_images', {}), dict):
        return 'sr_images is not a mapping'
    return None
