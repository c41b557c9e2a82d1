"""Self-ensemble ("+" results) and per-class metric tables, as researchers report them."""
import csv

import pytest
import torch

import segsr_basicsr  # noqa: F401,I001
from basicsr.models import build_model
from segsr_basicsr.results.per_class import class_of_image, find_split_classes, per_class_table, write_per_class
from segsr_basicsr.inference.self_ensemble import dihedral, dihedral_inverse, self_ensemble
from tests.test_model import make_opt, segsr_hat


def test_the_eight_transforms_are_distinct_and_each_inverse_undoes_its_transform():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    views = [dihedral(x, k) for k in range(8)]
    assert len({tuple(v.flatten().tolist()) + tuple(v.shape) for v in views}) == 8
    assert all(torch.equal(dihedral_inverse(v, k), x) for k, v in enumerate(views))


@pytest.mark.parametrize('tile', [None, {'size': 8, 'overlap': 4}])
def test_model_self_ensemble_equals_the_mean_of_the_eight_manual_transforms_per_tile(tmp_path, tile):
    """Self-ensemble is per tile (docs/testing.md): each tile's 8 views, averaged, then blended; without
    tiles the tile is the whole image."""
    from segsr_basicsr.inference.engine import forward_padded
    from segsr_basicsr.inference.tiling import tiled_forward
    opt = make_opt(tmp_path, network=segsr_hat())
    opt['is_train'] = False
    opt['val'].update(self_ensemble=True, tile=tile)
    model = build_model(opt)
    plain = build_model(dict(opt, val=dict(opt['val'], self_ensemble=False)))
    plain.net_g.load_state_dict(model.net_g.state_dict())
    lq = torch.rand(1, 3, 11, 13)  # not square, not a multiple of the window: transposed views differ in shape
    got = model.infer(lq)
    net = plain.net_g.eval()

    def mean_of_views(t):
        with torch.no_grad():
            return torch.stack([dihedral_inverse(forward_padded(net, dihedral(t, k)), k) for k in range(8)]).mean(0)

    manual = mean_of_views(lq) if tile is None else tiled_forward(mean_of_views, lq, 8, 4, multiple=4)
    assert got.shape == (1, 3, 44, 52)
    torch.testing.assert_close(got, manual, rtol=0, atol=1e-6)
    assert (got - plain.infer(lq)).abs().max() > 1e-4  # the ensemble is not just the identity view


def test_self_ensemble_maps_are_averaged_on_the_input_grid():
    def fn(t):  # an "SR" x2 by repetition, and a map equal to the input's first channel
        return t.repeat_interleave(2, -1).repeat_interleave(2, -2), t[:, :1]
    x = torch.rand(1, 3, 5, 7)
    sr, sem = self_ensemble(fn, x)
    torch.testing.assert_close(sr, fn(x)[0])  # equivariant fn: every view agrees
    torch.testing.assert_close(sem, x[:, :1])


def test_self_ensemble_must_be_a_bool(tmp_path):
    opt = make_opt(tmp_path, network=segsr_hat())
    opt['val']['self_ensemble'] = 'yes'
    with pytest.raises(ValueError, match='val.self_ensemble must be true or false'):
        build_model(opt)


def test_class_from_split_lists_else_from_the_file_name(tmp_path):
    root = tmp_path / 'UCMerced'
    (root / 'splits').mkdir(parents=True)
    (root / 'splits' / 'test.txt').write_text('agricultural/agricultural07.tif\nriver/1.tif  # SIRI-WHU style\n')
    (root / 'test' / 'HR_x4').mkdir(parents=True)
    classes = find_split_classes(root / 'test' / 'HR_x4')
    assert classes == {'agricultural07': 'agricultural', 'river_1': 'river'}
    assert class_of_image('river_1', classes) == 'river'
    assert class_of_image('denseresidential42', {}) == 'denseresidential'
    assert class_of_image('golf_course_003', {}) == 'golf_course'
    assert find_split_classes(tmp_path / 'elsewhere') == {}


def test_per_class_tables_csv_and_markdown(tmp_path):
    rows = [('beach01', {'psnr': 30.0, 'ssim': 0.8}), ('beach02', {'psnr': 32.0, 'ssim': 0.9}),
            ('airport1', {'psnr': 25.0, 'ssim': 0.5})]
    metrics, table = per_class_table(rows, {})
    assert metrics == ['psnr', 'ssim']
    assert table == [('airport', 1, [25.0, 0.5]), ('beach', 2, [31.0, pytest.approx(0.85)]),
                     ('mean', 3, [29.0, pytest.approx(2.2 / 3)])]
    csv_path, md_path = write_per_class(rows, {}, tmp_path, 'UCM_test')
    with open(csv_path) as f:
        got = list(csv.reader(f))
    assert got[0] == ['class', 'images', 'psnr', 'ssim'] and got[2] == ['beach', '2', '31.0000', '0.8500']
    md = md_path.read_text().splitlines()
    assert md[0] == '| class | images | psnr | ssim |' and md[-1] == '| **mean** | 3 | 29.0000 | 0.7333 |'
