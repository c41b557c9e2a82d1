"""Tiled inference: blended tiles reproduce the whole-image forward, in bounded pieces."""
import pytest
import torch
from torch import nn

from segsr_basicsr.archs.backbone import pad_to_multiple
from segsr_basicsr.inference.tiling import TileError, strip_lr_rows, row_strips, rows_to_run, tile_grid, tile_starts, tiled_forward


class LocalSR(nn.Module):
    """x4 conv net with a bounded receptive field: radius 2 LR px + 1 HR px (< 3 LR px).

    It pads its input to ``size_multiple`` like every GuidedBackbone, so tiles that
    are not multiples exercise that path too.
    """
    size_multiple = 4
    upscale = 4

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3 * 16, 3, padding=1),
                                  nn.PixelShuffle(4), nn.Conv2d(3, 3, 3, padding=1))

    def forward(self, x):
        h, w = x.shape[-2:]
        return self.body(pad_to_multiple(x, self.size_multiple))[..., :4 * h, :4 * w]


#: exactness margin: tiles get zero weight within `MARGIN` LR px of an inner edge, which is
#: more than the receptive-field radius of LocalSR (3 LR px); we compare everything except
#: the outer BORDER LR px of the image (where whole-image reflect padding differs from a tile's).
MARGIN = 4
BORDER = 4


@pytest.mark.parametrize('h,w,tile,overlap,batch', [
    (64, 64, 32, 16, 1),   # multiples of the tile
    (53, 70, 24, 16, 3),   # not multiples of the tile, nor of size_multiple; batched tiles
    (37, 19, 16, 8, 2),    # narrower than one tile along x
])
def test_tiled_equals_whole_image_away_from_borders(h, w, tile, overlap, batch):
    net = LocalSR().eval()
    lq = torch.rand(2, 3, h, w)
    with torch.no_grad():
        whole = net(lq)
        tiled = tiled_forward(net, lq, tile, overlap, margin=MARGIN, multiple=net.size_multiple, batch=batch)
    assert tiled.shape == whole.shape == (2, 3, 4 * h, 4 * w)
    b = 4 * BORDER
    diff = (tiled - whole)[..., b:-b, b:-b].abs().max().item()
    assert diff < 1e-4, diff
    # and the border is still a sensible SR result, not a blending artefact
    assert (tiled - whole).abs().max().item() < 1.0


def test_tiles_really_differ_without_blending_margin():
    """Guard that the exactness test can fail: with no margin the tile seams show."""
    net = LocalSR().eval()
    lq = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        whole = net(lq)
        seamy = tiled_forward(net, lq, 24, 2, margin=0)  # overlap 2 < receptive field
    assert (seamy - whole)[..., 16:-16, 16:-16].abs().max().item() > 1e-3


def test_multi_output_scales_and_streaming_sink():
    """fn may return several outputs at their own scale (SR x4 + maps x1); a sink gets every row once."""
    net = LocalSR().eval()
    lq = torch.rand(1, 3, 40, 50)

    def fn(t):
        return net(t), t.mean(1, keepdim=True)

    with torch.no_grad():
        sr, maps = tiled_forward(fn, lq, 16, 8)
        streamed = [torch.full_like(sr, float('nan')), torch.full_like(maps, float('nan'))]
        count = [torch.zeros(sr.shape[-2:]), torch.zeros(maps.shape[-2:])]
        widest = [0, 0]

        def sink(i, r0, r1, c0, c1, block):
            streamed[i][..., r0:r1, c0:c1] = block
            count[i][r0:r1, c0:c1] += 1
            widest[i] = max(widest[i], c1 - c0)

        assert tiled_forward(fn, lq, 16, 8, sink=sink) is None
    assert sr.shape == (1, 3, 160, 200) and maps.shape == (1, 1, 40, 50)
    torch.testing.assert_close(maps, lq.mean(1, keepdim=True), atol=1e-5, rtol=0)  # pointwise fn -> exact
    for i, full, s in ((0, sr, 4), (1, maps, 1)):
        assert bool((count[i] == 1).all()), 'every output pixel is streamed exactly once'
        torch.testing.assert_close(streamed[i], full)
        assert widest[i] <= 16 * s  # blocks are at most a tile wide, never the whole scene width


@pytest.mark.parametrize('h, w, tile, overlap', [(100, 70, 24, 8), (61, 45, 16, 12), (50, 50, 20, 4)])
def test_bands_of_tile_rows_give_the_whole_run_bit_for_bit(h, w, tile, overlap):
    """How ranks share one scene: each strip alone hands out exactly its rows, equal to a whole run's, even
    where the last tile row is shifted so that three tile rows cover a pixel (61x45: overlap 12 of 16)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 5, padding=2)

    def fn(t):
        with torch.no_grad():
            return (nn.functional.interpolate(conv(t), scale_factor=2, mode='nearest') + t.mean(), conv(t))

    x = torch.rand(1, 3, h, w)
    full = tiled_forward(fn, x, tile, overlap)
    th, _, ys, _ = tile_grid(h, w, tile, overlap)
    for parts in (2, 3, 5):
        strips = row_strips(ys, th, parts)
        assert strips[0][0] == 0 and strips[-1][1] == len(ys) and all(a < b for a, b in strips)
        out = [torch.full_like(f, float('nan')) for f in full]
        for strip in strips:
            y0, y1 = strip_lr_rows(h, ys, strip)

            def sink(i, r0, r1, c0, c1, block, y0=y0, y1=y1):
                s = 2 if i == 0 else 1
                assert y0 * s <= r0 < r1 <= y1 * s  # a strip hands out its own rows only
                out[i][:, :, r0:r1, c0:c1] = block
            tiled_forward(fn, x, tile, overlap, sink=sink, rows=strip)
        assert all(torch.equal(a, b) for a, b in zip(out, full)), parts
        runs = [len(rows_to_run(ys, th, b)) for b in strips]
        assert max(runs) - min(runs) <= 2, (strips, runs)  # balanced by the rows each strip runs


def test_tile_starts_cover_with_overlap_and_alignment():
    for length, tile, overlap, mult in [(100, 32, 8, 4), (257, 64, 16, 16), (64, 64, 8, 1), (65, 64, 8, 8)]:
        starts = tile_starts(length, tile, overlap, mult)
        assert starts[0] == 0 and starts[-1] + tile == length
        assert all(s % mult == 0 for s in starts[:-1])
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_failed_tile_raises_with_position():
    calls = []

    def fn(t):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError('out of memory (simulated)')
        return t.repeat_interleave(2, -1).repeat_interleave(2, -2)

    with pytest.raises(TileError, match=r'tile row 2/.*LR rows .*columns x 0:16.*out of memory'):
        tiled_forward(fn, torch.rand(1, 3, 40, 20), 16, 4)


@pytest.mark.parametrize('kw,msg', [(dict(tile=0), 'positive'), (dict(tile=16, overlap=16), 'overlap'),
                                    (dict(tile=16, overlap=4, margin=3), 'margin')])
def test_bad_tile_options_are_named(kw, msg):
    with pytest.raises(ValueError, match=msg):
        tiled_forward(lambda t: t, torch.rand(1, 3, 20, 20), **kw)


def test_tile_option_forms():
    """One parser for val.tile, --tile and the API; one default overlap (32, at most a quarter of the tile)."""
    from segsr_basicsr.errors import OptionError
    from segsr_basicsr.options import tile_spec
    from segsr_basicsr.inference.tiling import TileSpec
    assert tile_spec(None) == TileSpec()
    assert tile_spec(128) == TileSpec(128, 32)  # `--force_yml val:tile=128`
    assert tile_spec(64) == TileSpec(64, 16)
    assert tile_spec({'size': 64, 'overlap': 8}) == TileSpec(64, 8)
    assert tile_spec({'size': None}) == TileSpec()
    with pytest.raises(OptionError, match=r"val:tile: unknown key 'sise' \(did you mean 'size'\?\)"):
        tile_spec({'sise': 64})
    with pytest.raises(OptionError, match=r'val:tile overlap 64 must be smaller than the tile size 64'):
        tile_spec({'size': 64, 'overlap': 64})
