"""One batch path: every setting that changes an output is in its done-record, by construction.

The CLI (``segsr-infer``) and the API (``SeGSRUpscaler.upscale_batch``) run the same batch; a change of any
field of ``ModelSettings`` or ``OutputSettings`` makes a finished output another job's (docs/contract.md): refused
through either, naming the field, and replaced only with ``--overwrite``; both write the same record. A new
field without a row here fails the coverage test below.
"""
import dataclasses
import json

import numpy as np
import pytest
import torch

import segsr_basicsr  # noqa: F401,I001
from basicsr.archs import build_network
from segsr_basicsr.api import load_model
from segsr_basicsr.errors import InferError
from segsr_basicsr.infer import main
from segsr_basicsr.inference.records import RECORDS_DIR, ModelSettings, OutputSettings
from segsr_basicsr.io.checkpoint import network_metadata
from segsr_basicsr.archs.tiny_configs import TINY_EDSR, TINY_GUIDANCE

rasterio = pytest.importorskip('rasterio')

NET = dict(TINY_EDSR, guidance=dict(TINY_GUIDANCE))
OUT_NAME = 'scene_SeGSR_x4.tif'

#: field -> (load_model kwargs, upscale_batch kwargs, CLI flags) that change it from the default
CHANGES = {
    'checkpoint': ({'path': 'other'}, {}, ['--model', 'other']),
    'network_g': ({'opt': 'opt'}, {}, ['-opt', 'opt']),
    'param_key': ({'param_key': 'params'}, {}, ['--param-key', 'params']),
    'amp': ({'amp': 'bf16'}, {}, ['--amp', 'bf16']),
    'self_ensemble': ({'self_ensemble': True}, {}, ['--self-ensemble']),
    'merge_lora': ({'merge_lora': True}, {}, ['--merge-lora']),
    'tile': ({}, {'tile': 16, 'overlap': 4}, ['--tile', '16', '--tile-overlap', '4']),
    'save_maps': ({}, {'save_maps': True}, ['--save-maps']),
    'bands': ({}, {'bands': (3, 2, 1)}, ['--bands', '3', '2', '1']),
    'max_value': ({}, {'max_value': 200.0}, ['--max-value', '200']),
    'gray': ({}, {'gray': 'error'}, ['--gray', 'error']),
    'stretch': ({}, {'stretch': (1.0, 99.0)}, ['--stretch', '1', '99']),
    'cog': ({}, {'cog': True}, ['--cog']),
    'no_geo': ({}, {'no_geo': True}, ['--no-geo']),
    'quality': ({}, {'quality': True}, ['--quality']),
}
#: fields not varied here, and where they are
ELSEWHERE = {'backend': 'an .onnx file is another checkpoint file (checkpoint digest); tests/test_export.py'}


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """A guided checkpoint (params + params_ema), a second one, an option file with another network_g that
    loads the same weights, and a small GeoTIFF."""
    import yaml
    root = tmp_path_factory.mktemp('records')
    torch.manual_seed(0)
    paths = {}
    for name in ('ckpt', 'other'):
        net, ema = build_network(dict(NET)), build_network(dict(NET))
        paths[name] = root / f'{name}.pth'
        torch.save({'params': net.state_dict(), 'params_ema': ema.state_dict(),
                    **network_metadata({'network_g': NET, 'scale': 4})}, paths[name])
    paths['opt'] = root / 'opt.yml'
    paths['opt'].write_text(yaml.safe_dump({'network_g': dict(NET, res_scale=0.5)}))
    rng = np.random.default_rng(0)
    data = (rng.random((3, 20, 24)) * 200 + 20).astype(np.uint8)
    paths['input'] = root / 'in' / 'scene.tif'
    paths['input'].parent.mkdir()
    with rasterio.open(paths['input'], 'w', driver='GTiff', width=24, height=20, count=3, dtype='uint8',
                       crs='EPSG:32633', transform=rasterio.transform.from_origin(500000, 4e6, 10, 10)) as dst:
        dst.write(data)
    return paths


def _load(files, **kw):
    path = files[kw.pop('path', 'ckpt')]
    if 'opt' in kw:
        kw['opt'] = str(files[kw['opt']])
    return load_model(path, 'cpu', **kw)


def _api(files, out, load_kw, batch_kw):
    return _load(files, **load_kw).upscale_batch([files['input']], out, **batch_kw)


def _cli(files, out, flags, capsys):
    flags = [str(files[f]) if f in ('other', 'opt') else f for f in flags]
    model = [] if '--model' in flags else ['--model', str(files['ckpt'])]
    main([*model, '--device', 'cpu', '--no-progress', '--input', str(files['input']), '--output', str(out), *flags])
    return capsys.readouterr().out


def _record(out):
    return json.loads((out / RECORDS_DIR / f'{OUT_NAME}.json').read_text())


def test_every_setting_field_is_varied_here_or_named_elsewhere():
    names = {f.name for cls in (ModelSettings, OutputSettings) for f in dataclasses.fields(cls)}
    assert names == set(CHANGES) | set(ELSEWHERE)


@pytest.mark.parametrize('field', sorted(CHANGES))
def test_a_changed_setting_is_refused_naming_it_and_replaced_only_with_overwrite_through_the_api_and_the_cli(
        field, files, tmp_path, capsys):
    """docs/contract.md#who-may-replace-an-output: an output other settings made is another job's."""
    load_kw, batch_kw, flags = CHANGES[field]
    api_out, cli_out = tmp_path / 'api', tmp_path / 'cli'
    first = _api(files, api_out, {}, {})
    assert first['skipped'] == 0 and len(first['done']) == 1
    assert _api(files, api_out, {}, {})['skipped'] == 1  # same settings: done
    before = _record(api_out)
    with pytest.raises(InferError, match=f'{OUT_NAME}: was made by other settings: .*{field} ') as e:
        _api(files, api_out, load_kw, batch_kw)
    assert '--overwrite' in str(e.value) and _record(api_out) == before, f'{field}: the old output was replaced'
    changed = _api(files, api_out, load_kw, dict(batch_kw, overwrite=True))
    assert changed['skipped'] == 0 and len(changed['done']) == 1
    assert _record(api_out)['settings'] != before['settings']

    _cli(files, cli_out, [], capsys)
    assert 'already done' in _cli(files, cli_out, [], capsys)
    with pytest.raises(SystemExit) as e:
        _cli(files, cli_out, flags, capsys)
    assert e.value.code == 2 and 'made by other settings: ' in capsys.readouterr().err
    again = _cli(files, cli_out, [*flags, '--overwrite'], capsys)
    assert 'already done' not in again, f'{field}: the CLI took the old output as done'
    assert _record(cli_out) == _record(api_out)  # one record, whichever path wrote it
