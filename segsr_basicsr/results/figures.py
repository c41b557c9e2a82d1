"""Figures as SR papers print them, from results files and training logs (matplotlib, the ``[report]`` extra).

:func:`comparison_figure`: one test image, a zoomed crop of LR-bicubic, each run's SR, the HR and the
semantic maps of a guided run, side by side with each panel's PSNR. The image is chosen by the user or
as the one where the runs gain most over bicubic; the crop as the window where SR and bicubic differ
most. :func:`training_curves`: the training loss and the validation metric against the iteration,
read from BasicSR's training logs.
"""
import re
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from segsr_basicsr.errors import DataError

__all__ = ['comparison_figure', 'training_curves', 'pick_image', 'pick_crop']


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise DataError("figures need matplotlib: pip install 'segsr_basicsr[report]'") from None
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _plain(text) -> str:
    """``text`` as matplotlib prints it literally: a ``$`` would otherwise start mathtext (and a name like
    ``x$^{2}`` fail the whole figure)."""
    return str(text).replace('$', r'\$')


def _entries(runs, dataset):
    """(run name, dataset entry) of the runs that saved SR images of ``dataset``."""
    found = [(r['run'], r['datasets'][dataset]) for r in runs if r['datasets'].get(dataset, {}).get('sr_images')]
    if not found:
        raise DataError(f'no run saved SR images of {dataset!r}: test with val.save_img: true for figures.')
    return found


def pick_image(entries, metric) -> str:
    """The image where the runs' mean ``metric`` is highest relative to the set's mean (the most telling)."""
    stems = set.intersection(*[set(e['sr_images']) for _, e in entries])
    return max(sorted(stems), key=lambda s: np.mean([e['per_image'][s][metric] - e['metrics'][metric]
                                                      for _, e in entries]))


def pick_crop(sr, bicubic, size) -> Tuple[int, int]:
    """(y, x) of the ``size`` window where SR and bicubic differ most (box filter over |difference|)."""
    import cv2
    diff = np.abs(sr.astype(np.float32) - bicubic.astype(np.float32)).mean(-1)
    box = cv2.boxFilter(diff, -1, (size, size), normalize=True, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT)
    valid = box[:diff.shape[0] - size + 1, :diff.shape[1] - size + 1]
    y, x = np.unravel_index(int(np.argmax(valid)), valid.shape)
    return int(y), int(x)


def _panels(entries, stem, scale, metric):
    """[(title, BGR image)]: bicubic, each run's SR, HR; and the semantic maps of the first guided run."""
    from basicsr.metrics import calculate_metric

    from segsr_basicsr.data.prep import bicubic_up
    from segsr_basicsr.io.images import read_image
    entry = entries[0][1]
    lq, gt = next((lq, gt) for lq, gt in entry['pairs'] if Path(lq).stem == stem)
    hr = read_image(gt)
    up = bicubic_up(read_image(lq), scale)
    hr = hr[:up.shape[0], :up.shape[1]]
    opt = dict(entry['metric_options'][metric])
    panels = [(f'bicubic {calculate_metric({"img": up, "img2": hr}, dict(opt)):.2f}', up)]
    for name, e in entries:
        panels.append((f'{name} {e["per_image"][stem][metric]:.2f}', read_image(e['sr_images'][stem])))
    panels.append(('HR', hr))
    for name, e in entries:  # the semantic maps of the first guided run
        sr = Path(e['sr_images'][stem])
        maps = sorted(sr.parent.glob(sr.stem + '_semantic_unit*.png'))
        if maps:
            panels += [(f'{name} map {k + 1}', read_image(p)) for k, p in enumerate(maps)]
            break
    return panels


def comparison_figure(runs, out, dataset=None, image=None, crop=None, metric=None, scale=None) -> Path:
    """Write the comparison figure of ``image`` (or the auto-chosen one) to ``out`` (PNG); returns its path."""
    plt = _pyplot()
    dataset = dataset or next(iter(runs[0]['datasets']))
    entries = _entries(runs, dataset)
    metric = metric or next(m for m in entries[0][1]['metrics'] if m.startswith('psnr'))
    stem = image or pick_image(entries, metric)
    if stem not in entries[0][1]['sr_images']:
        raise DataError(f'image {stem!r} is not among the saved SR images of {dataset!r}: pick one of '
                        f'{", ".join(sorted(entries[0][1]["sr_images"])[:5])}, ...')
    panels = _panels(entries, stem, int(scale or runs[0]['scale']), metric)
    size = crop[2] if crop else max(16, min(panels[0][1].shape[:2]) // 3)
    y, x = crop[:2] if crop else pick_crop(panels[1][1], panels[0][1], size)
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.6))
    for ax, (title, img) in zip(np.atleast_1d(axes), panels):
        ax.imshow(img[y:y + size, x:x + size, ::-1], interpolation='nearest')
        ax.set_title(_plain(title), fontsize=8)
        ax.axis('off')
    fig.suptitle(_plain(f'{dataset} / {stem}: crop ({x}, {y}) {size}x{size}, {metric}'), fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out


_ITER = re.compile(r'iter:\s*([\d,]+),.*?(l_\w+): ([0-9.e+-]+)')
_VAL = re.compile(r'# (\w+): ([0-9.]+)\s+Best')


def _parse_log(text) -> Tuple[Dict[str, List[Tuple[int, float]]], Dict[str, List[Tuple[int, float]]]]:
    """({loss: [(iter, value)]}, {metric: [(iter, value)]}) from a BasicSR training log."""
    losses, metrics, it = {}, {}, 0
    for line in text.splitlines():
        m = _ITER.search(line)
        if m:
            it = int(m.group(1).replace(',', ''))
            for name, value in re.findall(r'(l_\w+): ([0-9.e+-]+)', line):
                losses.setdefault(name, []).append((it, float(value)))
        m = _VAL.search(line)
        if m:
            metrics.setdefault(m.group(1), []).append((it, float(m.group(2))))
    return losses, metrics


def training_curves(logs, out) -> Path:
    """Loss and validation metrics against the iteration, from BasicSR's training logs (a resumed run's
    logs together), as one PNG with two panels."""
    plt = _pyplot()
    text = '\n'.join(Path(p).read_text(encoding='utf-8') for p in logs)
    losses, metrics = _parse_log(text)
    if not losses:
        raise DataError(f'no training loss lines in {", ".join(map(str, logs))}: pass BasicSR training logs '
                        '(experiments/<name>/train_*.log).')
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, points in losses.items():
        axes[0].plot(*zip(*sorted(dict(points).items())), label=_plain(name))
    axes[0].set(xlabel='iteration', ylabel='loss', yscale='log', title='training loss')
    for name, points in metrics.items():
        axes[1].plot(*zip(*points), marker='o', label=_plain(name))
    axes[1].set(xlabel='iteration', title='validation')
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
