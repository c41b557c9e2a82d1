"""A split is its images' content: a split whose images changed after its manifest is refused before training or
testing on it (docs/contract.md#what-is-never-lost), whatever their names, sizes and times."""
import json
import os

import cv2
import numpy as np
import pytest

from segsr_basicsr.errors import DataError
from segsr_basicsr.utils.preflight import check_datasets
from test_data_prep import call


def _split(tmp_path, *flags):
    src = tmp_path / 'src'
    for cls in ('farm', 'lake'):
        (src / cls).mkdir(parents=True, exist_ok=True)
        for i in range(5):
            cv2.imwrite(str(src / cls / f'{cls}{i}.png'), np.full((16, 16, 3), 40 * i + (cls == 'lake'), np.uint8))
    out = tmp_path / 'out'
    r = call('split_dataset.py', '--src', src, '--out', out, '--ratios', 3, 1, 1, *flags, check=False)
    assert r.returncode == 0, r.stderr
    return out


def _opt(folder):
    return {'scale': 4, 'datasets': {'test_1': {'name': 't', 'type': 'SingleImageDataset', 'dataroot_gt': str(folder),
                                                'io_backend': {'type': 'disk'}}}}


def test_a_split_whose_images_changed_after_its_manifest_is_refused(tmp_path):
    out = _split(tmp_path)
    manifest = json.loads((out / 'splits' / 'manifest.json').read_text())
    test_hr = out / 'test' / 'HR'
    assert sorted(manifest['images']['test']) == sorted(p.name for p in test_hr.iterdir())
    check_datasets(_opt(test_hr), 'opt.yml', is_train=False)  # as written: fine
    victim, other = sorted(test_hr.iterdir())[:2]
    st = victim.stat()
    victim.write_bytes(other.read_bytes())  # other pixels (constant images of one size: one PNG size), same time
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (victim.stat().st_size, victim.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    with pytest.raises(DataError, match=rf'datasets:test_1: {test_hr} is not the split .*manifest.json describes '
                                        rf'\(digest {manifest["digest"][:12]}\): 1 changed \(e.g. {victim.name}\) '
                                        'since it was written. Restore those images, or make a new split'):
        check_datasets(_opt(test_hr), 'opt.yml', is_train=False)
    derived = out / 'test' / 'HR_x4'  # a folder made from that split's HR is checked too
    derived.mkdir()
    cv2.imwrite(str(derived / 'a.png'), np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(DataError, match='1 changed'):
        check_datasets(_opt(derived), 'opt.yml', is_train=False)
    cv2.imwrite(str(out / 'val' / 'HR' / 'extra.png'), np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(DataError, match=r'1 added \(e.g. extra.png\)'):
        check_datasets(_opt(out / 'val' / 'HR'), 'opt.yml', is_train=False)


def test_a_split_made_with_lists_only_has_no_images_to_check(tmp_path):
    out = _split(tmp_path, '--lists-only')
    assert 'images' not in json.loads((out / 'splits' / 'manifest.json').read_text())
