"""The docs' examples of segsr-export, segsr-infer and segsr-report run as written, on tiny files.

Every ```bash block of docs/export.md, docs/inference.md and docs/testing.md is read; each command of those
three tools is run by its entry point in a folder where the files it names exist (a tiny checkpoint at every
checkpoint path, a GeoTIFF, image folders, results.json files, a training log). ONNX exports are parsed and
checked (their 256 tiles take a while on CPU) except the one the segsr-infer examples read, which is
written for real. A docs example that drifts from the CLI fails here.
"""
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import segsr_basicsr  # noqa: F401,I001

DOCS = Path(__file__).resolve().parent.parent / 'docs'
TOOLS = {'segsr-export': 'segsr_basicsr.export', 'segsr-infer': 'segsr_basicsr.infer',
         'python -m segsr_basicsr.report': 'segsr_basicsr.report'}


def doc_commands(name):
    """The commands of the three tools in the ```bash blocks of docs/<name>, continuation lines joined."""
    text = (DOCS / name).read_text(encoding='utf-8')
    commands = []
    for block in re.findall(r'```bash\n(.*?)```', text, re.S):
        for line in block.replace('\\\n', ' ').splitlines():
            words = shlex.split(line, comments=True)
            for tool in TOOLS:
                if ' '.join(words).startswith(tool):
                    commands.append((tool, words[len(tool.split()):]))
    return commands


def _files(root):
    """The files the examples name: checkpoints, a scene, image folders, results of two runs, a log."""
    from basicsr.archs import build_network

    from segsr_basicsr.archs.tiny_configs import TINY_EDSR, TINY_GUIDANCE
    from segsr_basicsr.io.checkpoint import network_metadata
    from tests.test_results_readback import _results
    opt = dict(TINY_EDSR, guidance=dict(TINY_GUIDANCE))
    torch.manual_seed(0)
    ckpt = {'params': build_network(dict(opt)).state_dict(), **network_metadata({'network_g': opt, 'scale': 4})}
    for path in ('net_g_latest.pth', 'experiments/SeGSR_HAT_x4/models/net_g_latest.pth',
                 'experiments/SeGSR_HAT_x4_UCMerced/models/net_g_latest.pth'):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(ckpt, root / path)
    import cv2
    import rasterio
    rng = np.random.default_rng(0)
    profile = dict(driver='GTiff', width=40, height=30, count=3, dtype='uint8', crs='EPSG:32633',
                   transform=rasterio.transform.from_origin(500000, 4000000, 0.5, 0.5))
    with rasterio.open(root / 'scene.tif', 'w', **profile) as dst:
        dst.write(rng.integers(0, 256, (3, 30, 40), dtype=np.uint8))
    for folder in ('scenes', 'my_images'):
        (root / folder).mkdir()
        shutil.copy(root / 'scene.tif', root / folder / 'scene.tif')
    cv2.imwrite(str(root / 'my_images' / 'small.png'), rng.integers(0, 256, (13, 10, 3), dtype=np.uint8))
    for seed, run in enumerate(('run_a', 'run_b')):
        _results(root / 'results', run, seed)
    (root / 'experiments' / 'run_a').mkdir()
    (root / 'experiments' / 'run_a' / 'train_x.log').write_text(
        '[epoch:  0, iter:       1, lr:(2.000e-04,)] [eta: 0:00:01] l_pix: 1.0000e-01\n'
        '[epoch:  0, iter:       2, lr:(2.000e-04,)] [eta: 0:00:01] l_pix: 8.0000e-02\n')


def _run(tool, argv):
    import importlib
    module = importlib.import_module(TOOLS[tool])
    try:
        module.main(argv)
    except SystemExit as e:
        assert e.code == 0, (tool, argv)


def test_the_docs_examples_of_export_infer_and_report_run_as_written(tmp_path, monkeypatch, capsys):
    pytest.importorskip('onnxruntime', reason="the export extra is not installed: pip install '.[export]'")
    pytest.importorskip('matplotlib', reason="figures need the [report] extra (matplotlib)")
    from segsr_basicsr.export import check_args, parse_args
    monkeypatch.chdir(tmp_path)
    _files(tmp_path)
    commands = [c for doc in ('export.md', 'inference.md', 'testing.md') for c in doc_commands(doc)]
    tools = [tool for tool, _ in commands]
    assert tools.count('segsr-export') >= 5 and tools.count('segsr-infer') >= 3 and 'python -m segsr_basicsr.report' \
        in tools, commands
    for tool, argv in commands:
        if tool == 'segsr-export' and '--output' in argv and argv[argv.index('--output') + 1] != 'segsr_x4.onnx':
            check_args(parse_args(argv))  # every flag exists and the combination is accepted
            continue
        if '--device' in argv and not torch.cuda.is_available():
            argv = [a for a in argv if a not in ('--device', 'cuda')]
        _run(tool, argv)
    capsys.readouterr()
    assert (tmp_path / 'segsr_x4.onnx').is_file() and (tmp_path / 'all.safetensors').is_file()
    assert (tmp_path / 'out_onnx' / 'scene_SeGSR_x4.tif').is_file() and (tmp_path / 'out_st' / 'scene_SeGSR_x4.tif').is_file()
    assert (tmp_path / 'results' / 'my_images_sr' / 'small_SeGSR_x4.png').is_file()
    assert (tmp_path / 'table.tex').is_file() and (tmp_path / 'table_curves.png').is_file()
    assert (tmp_path / 'results' / 'table.md').is_file()


def test_the_python_api_example_runs_as_written(tmp_path, monkeypatch):
    """docs/inference.md's ``From Python`` block, with ``rgb`` an image (and the CPU where there is no GPU)."""
    monkeypatch.chdir(tmp_path)
    _files(tmp_path)
    (tmp_path / 'out').mkdir()
    text = (DOCS / 'inference.md').read_text(encoding='utf-8')
    block = re.search(r'## From Python\n+```python\n(.*?)```', text, re.S).group(1)
    if not torch.cuda.is_available():
        block = block.replace("device='cuda'", "device='cpu'")
    scope = {'rgb': np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)}
    exec(compile(block, 'docs/inference.md', 'exec'), scope)  # noqa: S102 - our own docs
    assert scope['sr'].shape == (80, 96, 3) and len(scope['maps']) == 2
    assert (tmp_path / 'out' / 'scene_x4.tif').is_file()
