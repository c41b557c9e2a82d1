"""A split you can cite and check: ``splits/manifest.json`` written by datasets_prep/split_dataset.py, read back.

The manifest holds every source file of each split with its SHA-256 and one digest over them (the number to
cite: it does not depend on how the PNGs were encoded), and the SHA-256 of every HR image written
(``images``). :func:`check_split_images` compares those with the HR folder of a split before training or
testing on it: an image replaced, added or removed after the manifest was written makes the split another
one than the digest names, whatever its names, sizes and times (docs/contract.md#what-is-never-lost).
"""
import hashlib
import json
import os
from pathlib import Path

from segsr_basicsr.errors import DataError
from segsr_basicsr.io.digest import file_sha256
from segsr_basicsr.io.images import IMG_EXTS, readable_images
from segsr_basicsr.utils.progress import progress

MANIFEST = Path('splits') / 'manifest.json'


def split_manifest(src_root, splits, method, output_name, hr_folders=None):
    """Every file of each split with its SHA-256 (of the source file), the method (seed and ratios, or the
    lists it came from), one digest over the sources, and with ``hr_folders`` ({split: folder}) the SHA-256 of
    every image written there (``images``)."""
    files = {split: [{'file': f, 'name': output_name(f), 'sha256': file_sha256(Path(src_root) / f)}
                     for f in progress(names, f'hashing {split}', unit='images')]
             for split, names in splits.items()}
    canonical = json.dumps(files, sort_keys=True, separators=(',', ':')).encode()
    manifest = dict(method, digest=hashlib.sha256(canonical).hexdigest(), splits=files)
    if hr_folders:
        manifest['images'] = {split: {n: file_sha256(Path(folder) / n) for n in readable_images(folder, IMG_EXTS)}
                              for split, folder in hr_folders.items()}
    return manifest


def _split_of(folder):
    """(manifest path, split name, HR folder) when ``folder`` is ``<root>/<split>/<kind>`` of a split with a
    manifest, else None."""
    parts = Path(os.path.abspath(folder)).parts
    if len(parts) < 3:
        return None
    root, split = Path(*parts[:-2]), parts[-2]
    path = root / MANIFEST
    return (path, split, root / split / 'HR') if path.is_file() else None


def check_split_images(folders, where):
    """Refuse (``DataError``) a dataset folder whose split's HR images differ, by content, from its manifest.
    Folders outside a split with a manifest, and manifests without image digests (--lists-only, older
    ones), are not checked."""
    seen = set()
    for folder in folders:
        found = _split_of(folder) if isinstance(folder, str) else None
        if found is None or found in seen:
            continue
        seen.add(found)
        path, split, hr = found
        try:
            manifest = json.loads(path.read_text())
            images = (manifest.get('images') or {}).get(split)
        except (OSError, ValueError, AttributeError):
            raise DataError(f'{where}: {path} is not a readable split manifest; restore it, or make the split '
                            'again with datasets_prep/split_dataset.py into a new --out.') from None
        if images is None or not hr.is_dir():
            continue
        on_disk = readable_images(hr, IMG_EXTS)
        changed = [n for n in on_disk if n in images and file_sha256(hr / n) != images[n]]
        added = [n for n in on_disk if n not in images]
        missing = sorted(set(images) - set(on_disk))
        if changed or added or missing:
            what = '; '.join(f'{len(v)} {k} (e.g. {v[0]})' for k, v in
                             (('changed', changed), ('added', added), ('missing', missing)) if v)
            digest = str(manifest.get('digest', ''))[:12]
            raise DataError(f'{where}: {hr} is not the split {path} describes (digest {digest}): {what} since it '
                            'was written. Restore those images, or make a new split with '
                            'datasets_prep/split_dataset.py into a new --out.')
