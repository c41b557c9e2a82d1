"""The shipped option files are where the README's commands look for them: flat in options/
(``-opt options/train_SeGSR_HAT_x4.yml``), one test file per train file, every network registered."""
from pathlib import Path

import pytest

import segsr_basicsr  # noqa: F401  (registers the SeGSR_* archs in BasicSR's ARCH_REGISTRY)
from basicsr.utils.registry import ARCH_REGISTRY
from segsr_basicsr.io.option_file import load_option_file

OPTIONS = Path(__file__).resolve().parents[1] / 'options'
TRAIN_FILES = sorted(OPTIONS.glob('train_*.yml'))
FLAT_FILES = sorted(OPTIONS.glob('*.yml'))


def twin(train_file):
    return OPTIONS / train_file.name.replace('train_', 'test_', 1)


def test_the_promised_files_exist():
    assert (OPTIONS / 'train_SeGSR_HAT_x4.yml').is_file()
    assert (OPTIONS / 'test_SeGSR_HAT_x4.yml').is_file()
    names = {f.name for f in TRAIN_FILES}
    assert {f'train_SeGSR_HAT_x{s}.yml' for s in (2, 3, 4)} <= names
    assert {f'train_SeGSR_{arch}_x4.yml' for arch in ('EDSR', 'RCAN', 'SwinIR')} <= names


def test_no_option_file_is_left_in_the_old_folders():
    for old in ('train', 'test'):
        assert not list((OPTIONS / old).rglob('*.yml')), f'option files belong directly in options/, not options/{old}/'


def test_every_test_file_has_a_train_file():
    assert {f.name for f in OPTIONS.glob('test_*.yml')} == {twin(f).name for f in TRAIN_FILES}


@pytest.mark.parametrize('train_file', TRAIN_FILES, ids=lambda f: f.name)
def test_every_train_file_has_a_test_twin_with_the_same_network_and_scale(train_file):
    test_file = twin(train_file)
    assert test_file.is_file(), f'{test_file.relative_to(OPTIONS.parent)} is missing'
    train, test = load_option_file(train_file), load_option_file(test_file)
    assert test['network_g'] == train['network_g'] and test['scale'] == train['scale']
    assert test['path']['pretrain_network_g'] == f'experiments/{train["name"]}/models/net_g_latest.pth'
    crops = {m['crop_border'] for m in test['val']['metrics'].values()}
    assert crops == {train['scale']}
    # both conventions, each under a name that says which (docs/testing.md)
    conventions = {name: m['test_y_channel'] for name, m in test['val']['metrics'].items()}
    assert conventions == {'psnr_y': True, 'ssim_y': True, 'psnr_rgb': False, 'ssim_rgb': False}


@pytest.mark.parametrize('option_file', FLAT_FILES, ids=lambda f: f.name)
def test_every_option_file_loads_and_names_a_registered_network(option_file):
    opt = load_option_file(option_file)
    assert opt['network_g']['type'] in ARCH_REGISTRY, f'{option_file.name}: {opt["network_g"]["type"]} is not registered'


@pytest.mark.parametrize('train_file', TRAIN_FILES, ids=lambda f: f.name)
def test_train_files_read_the_folders_docs_datasets_md_creates(train_file):
    opt = load_option_file(train_file)
    s = opt['scale']
    for phase, dataset in opt['datasets'].items():
        assert dataset['dataroot_gt'] == f'datasets/UCMerced/{phase}/HR_x{s}'  # make_bicubic.py --scales s
        assert dataset['dataroot_lq'] == f'datasets/UCMerced/{phase}/LR_x{s}'
    text = (OPTIONS.parent / 'docs' / 'datasets.md').read_text(encoding='utf-8')
    assert '--out datasets/UCMerced' in text and '{train,val,test}/HR --scales 2 3 4' in text


@pytest.mark.parametrize('option_file', FLAT_FILES, ids=lambda f: f.name)
def test_the_lines_to_edit_are_marked(option_file):
    lines = option_file.read_text(encoding='utf-8').splitlines()
    for key in ('dataroot_gt:', 'dataroot_lq:', 'pretrain_network_g:', 'clip_pretrained:'):
        for line in [l for l in lines if l.strip().startswith(key)]:
            assert '# EDIT' in line or '# CHOOSE' in line, f'{option_file.name}: {line.strip()!r} has no EDIT/CHOOSE mark'


def test_the_promised_command_without_datasets_names_the_folder_and_the_command_that_makes_it(
        tmp_path, monkeypatch, capsys):
    """``python -m segsr_basicsr.train -opt options/train_SeGSR_HAT_x4.yml`` from a checkout without datasets:
    one line naming the missing folder and the datasets_prep command (docs/datasets.md), nothing created."""
    from segsr_basicsr.train import main
    (tmp_path / 'options').symlink_to(OPTIONS)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(['-opt', 'options/train_SeGSR_HAT_x4.yml'])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith('segsr-train: error: ')]
    assert exc.value.code == 2 and len(lines) == 1 and 'Traceback' not in err, err
    for fragment in ("datasets:train:dataroot_gt = 'datasets/UCMerced/train/HR_x4' does not exist",
                     'python datasets_prep/split_dataset.py', '--out datasets/UCMerced',
                     'python datasets_prep/make_bicubic.py --input datasets/UCMerced/train/HR --scales 4',
                     'docs/datasets.md'):
        assert fragment in lines[0], (fragment, lines[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ['options']  # no experiments/, tb_logger/
