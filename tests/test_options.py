"""Shipped option files, kept as HAT/BasicSR users keep them: options/train/<Arch>/ and options/test/<Arch>/."""
from pathlib import Path

import pytest

from segsr_basicsr.io.option_file import load_option_file

OPTIONS = Path(__file__).resolve().parents[1] / 'options'
TRAIN_FILES = sorted((OPTIONS / 'train').glob('*/train_*.yml'))


def test_the_shipped_layout():
    assert {f.parent.name for f in TRAIN_FILES} == {'HAT', 'EDSR', 'RCAN', 'SwinIR'}
    assert {f.name for f in TRAIN_FILES if f.parent.name == 'HAT'} == {f'train_SeGSR_HAT_x{s}.yml' for s in (2, 3, 4)}
    assert not list(OPTIONS.glob('*.yml')), 'option files belong in options/train/<Arch>/ or options/test/<Arch>/'


@pytest.mark.parametrize('train_file', TRAIN_FILES, ids=lambda f: f.name)
def test_every_train_file_has_a_test_file_with_the_same_network_and_scale(train_file):
    test_file = OPTIONS / 'test' / train_file.parent.name / train_file.name.replace('train_', 'test_', 1)
    assert test_file.is_file(), f'{test_file} is missing'
    train, test = load_option_file(train_file), load_option_file(test_file)
    assert test['network_g'] == train['network_g'] and test['scale'] == train['scale']
    assert test['path']['pretrain_network_g'] == f'experiments/{train["name"]}/models/net_g_latest.pth'
    crops = {m['crop_border'] for m in test['val']['metrics'].values()}
    assert crops == {train['scale']} and all(m['test_y_channel'] for m in test['val']['metrics'].values())
