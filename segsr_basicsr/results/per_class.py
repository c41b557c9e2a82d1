"""Per-class PSNR/SSIM tables for remote-sensing test sets (UCMerced, AID, ... are class-balanced,
and papers report which classes a method helps).

The class of a test image comes from the split lists that ``datasets_prep/split_dataset.py``
writes (``<dataset>/splits/*.txt``, lines ``class/file.ext``, found next to the test folder),
else from the file-name stem without its trailing digits (``airplane07`` -> ``airplane``).
"""
import csv
import io
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from segsr_basicsr.io.atomic import atomic_write

#: how many folders above the dataroot we look for ``splits/`` (test/HR_x4 -> dataset root is 2 up)
SPLIT_SEARCH_DEPTH = 3


def find_split_classes(dataroot: Optional[str]) -> Dict[str, str]:
    """{output image stem: class} from the nearest ``splits/*.txt`` above ``dataroot`` ({} if none)."""
    if not dataroot:
        return {}
    from segsr_basicsr.data.prep import output_name
    folder = Path(dataroot).resolve()
    for parent in [folder, *folder.parents][:SPLIT_SEARCH_DEPTH + 1]:
        lists = sorted((parent / 'splits').glob('*.txt'))
        if lists:
            classes = {}
            for path in lists:
                for line in path.read_text(encoding='utf-8').splitlines():
                    line = line.split('#', 1)[0].strip()
                    if '/' in line:
                        classes[output_name(line)] = line.rpartition('/')[0]
            return classes
    return {}


def class_of_image(stem: str, split_classes: Dict[str, str]) -> str:
    """The class of image ``stem``: from the split lists, else the stem without trailing digits/separators."""
    if stem in split_classes:
        return split_classes[stem]
    return re.sub(r'[\s_\-.]*\d+$', '', stem) or stem


def per_class_table(rows: Sequence[Tuple[str, Dict[str, float]]], split_classes: Dict[str, str]
                    ) -> Tuple[List[str], List[Tuple[str, int, List[float]]]]:
    """rows: (image stem, {metric: value}) -> (metric names, [(class, n images, [mean per metric])]),
    classes sorted by name, then the mean over all images as class ``mean``."""
    metrics = list(rows[0][1]) if rows else []
    groups: Dict[str, List[Dict[str, float]]] = {}
    for stem, values in rows:
        groups.setdefault(class_of_image(stem, split_classes), []).append(values)

    def mean(items):
        return [sum(v[m] for v in items) / len(items) for m in metrics]

    table = [(cls, len(items), mean(items)) for cls, items in sorted(groups.items())]
    table.append(('mean', len(rows), mean([v for _, v in rows])))
    return metrics, table


def write_per_class(rows, split_classes, out_dir, dataset_name) -> Tuple[Path, Path]:
    """Write ``per_class_<dataset>.csv`` and ``.md`` into ``out_dir`` atomically; returns both paths."""
    metrics, table = per_class_table(rows, split_classes)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    writer.writerow(['class', 'images', *metrics])
    for cls, n, values in table:
        writer.writerow([cls, n, *[f'{v:.4f}' for v in values]])
    md = [f'| class | images | {" | ".join(metrics)} |', '|---|---:|' + '---:|' * len(metrics)]
    for cls, n, values in table:
        name = f'**{cls}**' if cls == 'mean' else cls
        md.append(f'| {name} | {n} | ' + ' | '.join(f'{v:.4f}' for v in values) + ' |')
    out_dir = Path(out_dir)
    csv_path, md_path = out_dir / f'per_class_{dataset_name}.csv', out_dir / f'per_class_{dataset_name}.md'
    atomic_write(csv_path, lambda tmp: Path(tmp).write_text(buf.getvalue(), encoding='utf-8'), durable=False)
    atomic_write(md_path, lambda tmp: Path(tmp).write_text('\n'.join(md) + '\n', encoding='utf-8'), durable=False)
    return csv_path, md_path
