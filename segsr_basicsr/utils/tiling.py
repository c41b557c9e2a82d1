"""Tiled inference for scenes too large for one forward pass.

The LR image is cut into overlapping tiles of one size (so they batch), each tile
is super-resolved, and the outputs are blended with feathered weights that are
exactly zero within ``margin`` LR pixels of an inner tile edge and ramp linearly
to one over the rest of the overlap. Per axis the weights form a partition of
unity, so for a network whose receptive field radius is below ``margin`` the
tiled result equals the whole-image result (up to float rounding) everywhere
except at the image border; for global-context networks (HAT's channel
attention, CLIP guidance) the ramp hides the seams.

Memory: tiles are processed in rows; an output pixel is handed to a ``sink``
(or copied into the returned tensor) as soon as no later tile touches it, so
besides the network's activations on one tile (batch) only about one tile and a
strip of ``overlap`` rows across the scene are held in float.
"""
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from segsr_basicsr.errors import TileError

Outputs = Union[torch.Tensor, Sequence[torch.Tensor]]




def tile_starts(length: int, tile: int, overlap: int, multiple: int = 1) -> List[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)``.

    Neighbouring tiles overlap by at least ``overlap``; the first and last tiles
    touch the image borders; all but the last start on a multiple of ``multiple``
    (so window-based networks see the same window grid as on the whole image).
    """
    if length <= tile:
        return [0]
    span = length - tile
    step = max(tile - overlap - (multiple - 1), 1)
    n = math.ceil(span / step) + 1
    starts = [(round(k * span / (n - 1)) // multiple) * multiple for k in range(n - 1)] + [span]
    return sorted(set(starts))


def _axis_weights(starts: List[int], size: int, length: int, scale: int, overlap: int, margin: int,
                  device) -> List[torch.Tensor]:
    """Per-tile 1-D blend weights at output resolution, normalised to sum to one over tiles.

    Returns one tensor of ``size * scale`` weights per start.
    """
    u = (torch.arange(size * scale, device=device, dtype=torch.float64) + 0.5) / scale  # LR coordinate in tile
    ramp = overlap - 2 * margin

    def feather(dist):
        if ramp <= 0:
            return (dist >= margin).double()
        return ((dist - margin) / ramp).clamp(0, 1)

    raw = []
    for s in starts:
        w = torch.ones_like(u)
        if s > 0:
            w = torch.minimum(w, feather(u))
        if s + size < length:
            w = torch.minimum(w, feather(size - u))
        raw.append(w)
    total = torch.zeros(length * scale, device=device, dtype=torch.float64)
    for s, w in zip(starts, raw):
        total[s * scale:(s + size) * scale] += w
    if bool((total <= 0).any()):
        raise RuntimeError(f'tile blending left pixels uncovered (overlap={overlap}, margin={margin}); '
                           'use a larger overlap or a smaller margin')
    return [(w / total[s * scale:(s + size) * scale]).float() for s, w in zip(starts, raw)]


def tiled_forward(fn: Callable[[torch.Tensor], Outputs],
                  lq: torch.Tensor,
                  tile: int,
                  overlap: int = 16,
                  *,
                  margin: Optional[int] = None,
                  multiple: int = 1,
                  batch: int = 1,
                  device: Optional[torch.device] = None,
                  out_device: Optional[torch.device] = None,
                  sink: Optional[Callable[[int, int, int, int, int, torch.Tensor], None]] = None,
                  progress: Optional[Callable[[int], None]] = None) -> Optional[Outputs]:
    """Run ``fn`` over overlapping tiles of ``lq`` (B, C, H, W) and blend the results.

    ``fn`` maps a batch of tiles (n*B, C, h, w) on ``device`` to one tensor
    (n*B, C', h*s, w*s) or a tuple of them, each with its own integer scale s
    (e.g. the SR image at x4 and semantic maps at x1).
    ``tile``/``overlap``/``margin`` are LR pixels; ``tile`` is rounded up to
    ``multiple``; ``margin`` (default ``overlap // 4``) is the band at inner tile
    edges that gets zero weight. ``batch`` tiles of a tile row go through ``fn`` at once.

    Without ``sink`` returns the blended output(s), float32 on ``out_device``
    (default: ``lq.device``). With ``sink``, every output pixel is handed over
    exactly once, as soon as no later tile touches it:
    ``sink(output_index, row0, row1, col0, col1, block)`` with block
    (B, C', row1-row0, col1-col0), and nothing is returned. Held in float then:
    about one tile plus a strip of ``overlap`` rows across the scene.
    A failing tile raises :class:`TileError` naming its position.
    """
    if tile <= 0:
        raise ValueError(f'tile size must be positive, got {tile}')
    if not 0 <= overlap < tile:
        raise ValueError(f'tile overlap must be in [0, tile size={tile}), got {overlap}')
    if margin is None:
        margin = overlap // 4
    if not 0 <= 2 * margin <= overlap:
        raise ValueError(f'tile margin must be between 0 and half the overlap ({overlap}), got {margin}')
    if batch < 1:
        raise ValueError(f'tile batch must be >= 1, got {batch}')
    multiple = max(int(multiple), 1)
    tile = math.ceil(tile / multiple) * multiple
    device = lq.device if device is None else device
    out_device = lq.device if out_device is None else out_device

    b, _, h, w = lq.shape
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, th, overlap, multiple), tile_starts(w, tw, overlap, multiple)

    scales: Optional[List[int]] = None
    wy: Dict[int, List[torch.Tensor]] = {}
    wx: Dict[int, List[torch.Tensor]] = {}
    results: List[torch.Tensor] = []
    single = False
    # Per output, the pixels still being accumulated:
    #   win   rows [top, bot) of the current tile row, columns [win_x0, ...) (about one tile);
    #   carry rows [top, prev bot) of every column: the previous tile row's bottom overlap;
    #   below rows [done_y, bot) that the next tile row will add to (becomes the next carry).
    states: List[dict] = []

    def put(i, r0, r1, c0, c1, block):
        if sink is not None:
            sink(i, r0, r1, c0, c1, block)
        else:
            results[i][:, :, r0:r1, c0:c1] = block

    def flush(i, upto):
        """Columns [win_x0, upto) of the current tile row are final: emit them, keep their lower overlap."""
        st = states[i]
        n = upto - st['win_x0']
        if n <= 0:
            return
        cols = st['win'][..., :n]
        final = st['done_y'] - st['top']
        put(i, st['top'], st['done_y'], st['win_x0'], upto, cols[:, :, :final])
        st['below'][..., st['win_x0']:upto] = cols[:, :, final:]
        st['win'], st['win_x0'] = st['win'][..., n:], upto

    for r, y0 in enumerate(ys):
        for c0 in range(0, len(xs), batch):
            cols = xs[c0:c0 + batch]
            tiles = torch.cat([lq[:, :, y0:y0 + th, x0:x0 + tw] for x0 in cols]).to(device)
            try:
                out = fn(tiles)
            except Exception as e:  # noqa: BLE001 - re-raised with the position
                pos = ', '.join(f'x {x0}:{x0 + tw}' for x0 in cols)
                raise TileError(f'tiled inference failed on tile row {r + 1}/{len(ys)} (LR rows {y0}:{y0 + th}; '
                                f'columns {pos}) of a {h}x{w} image: {type(e).__name__}: {e}') from e
            if isinstance(out, torch.Tensor):
                single, out = True, (out, )
            if scales is None:
                scales = []
                for o in out:
                    s = o.shape[-2] // th
                    if s < 1 or o.shape[-2] != s * th or o.shape[-1] != s * tw:
                        raise TileError(f'tile output of shape {tuple(o.shape)} is not an integer multiple '
                                        f'of the tile size {th}x{tw}')
                    scales.append(s)
                    wy.setdefault(s, _axis_weights(ys, th, h, s, overlap, margin, out_device))
                    wx.setdefault(s, _axis_weights(xs, tw, w, s, overlap, margin, out_device))
                    states.append({'carry': None, 'channels': o.shape[1]})
                    if sink is None:
                        results.append(torch.empty(b, o.shape[1], h * s, w * s, device=out_device))
            for i, (o, s) in enumerate(zip(out, scales)):
                st = states[i]
                if c0 == 0:  # a new tile row
                    top, bot = y0 * s, (y0 + th) * s
                    done_y = (ys[r + 1] if r + 1 < len(ys) else h) * s
                    st.update(top=top, bot=bot, done_y=done_y, win_x0=0,
                              win=torch.zeros(b, st['channels'], bot - top, 0, device=out_device),
                              below=torch.zeros(b, st['channels'], bot - done_y, w * s, device=out_device))
                o = o.to(out_device, torch.float32)
                for j, x0 in enumerate(cols):
                    c = c0 + j
                    xa, xb = x0 * s, (x0 + tw) * s
                    win_x1 = st['win_x0'] + st['win'].shape[-1]
                    if xb > win_x1:  # widen the window, starting from what the previous row left there
                        ext = st['win'].new_zeros(b, st['channels'], st['bot'] - st['top'], xb - win_x1)
                        if st['carry'] is not None:
                            ext[:, :, :st['carry'].shape[2]] = st['carry'][..., win_x1:xb]
                        st['win'] = torch.cat([st['win'], ext], dim=3)
                    wgt = wy[s][r][:, None] * wx[s][c][None, :]
                    lo = xa - st['win_x0']
                    st['win'][..., lo:lo + tw * s] += o[j * b:(j + 1) * b] * wgt
                    flush(i, (xs[c + 1] if c + 1 < len(xs) else w) * s)
            del out, tiles
            if progress is not None:
                progress(len(cols))
        for st in states:  # this row's lower overlap is the next row's start
            st['carry'], st['below'] = st['below'], None

    if sink is not None:
        return None
    return results[0] if single else tuple(results)


def parse_tile_opt(tile) -> Tuple[Optional[int], int]:
    """``{size, overlap}`` / int / None from an option file -> (size or None, overlap)."""
    if tile is None or tile is False:
        return None, 0
    if isinstance(tile, int):
        return tile, min(16, tile // 4)
    if isinstance(tile, dict):
        unknown = set(tile) - {'size', 'overlap', 'batch', 'margin'}
        if 'size' not in tile or unknown:
            raise ValueError(f'tile option must look like {{size: 128, overlap: 16}}, got {tile!r}')
        if tile['size'] is None:
            return None, 0
        return int(tile['size']), int(tile.get('overlap', min(16, int(tile['size']) // 4)))
    raise ValueError(f'tile option must be an int or {{size: ..., overlap: ...}}, got {tile!r}')
