"""The tile grid and the feathered blend: cut an LR image into tiles, put the SR tiles back together.

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

This module knows nothing about networks: :mod:`segsr_basicsr.inference.engine` runs one through it.
"""
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from segsr_basicsr.errors import TileError
from segsr_basicsr.options import DEFAULT_OVERLAP, TileSpec, default_overlap  # noqa: F401

Outputs = Union[torch.Tensor, Sequence[torch.Tensor]]
Sink = Callable[[int, int, int, int, int, torch.Tensor], None]

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


def tile_grid(h: int, w: int, tile: int, overlap: int, multiple: int = 1) -> Tuple[int, int, List[int], List[int]]:
    """The one tile grid: (tile height, tile width, row starts, column starts) for an h x w image.

    ``tile`` is rounded up to ``multiple`` and clipped to the image.
    """
    multiple = max(int(multiple), 1)
    tile = math.ceil(tile / multiple) * multiple
    th, tw = min(tile, h), min(tile, w)
    return th, tw, tile_starts(h, th, overlap, multiple), tile_starts(w, tw, overlap, multiple)


def row_strips(ys: List[int], th: int, parts: int) -> List[Tuple[int, int]]:
    """Tile rows (starts ``ys``, height ``th``) cut into at most ``parts`` contiguous bands ``(first, end)`` that
    cost about the same: a strip after the first also runs the rows above it that reach into it."""
    n = len(ys)
    parts = max(1, min(int(parts), n))
    lead = len(rows_to_run(ys, th, (n // 2, n // 2 + 1))) - 1
    per = (n + (parts - 1) * lead) / parts
    cuts = sorted({0, n, *(min(max(round(k * per - (k - 1) * lead), 1), n - 1) for k in range(1, parts))})
    return list(zip(cuts, cuts[1:]))


def rows_to_run(ys: List[int], th: int, rows: Tuple[int, int]) -> range:
    """Tile rows to run so that the final pixels of tile rows ``rows`` come out as in a whole run: the strip
    itself and every earlier row whose tiles reach into it (its output starts at LR row ``ys[first]``)."""
    first, end = rows
    r = first
    while r > 0 and ys[r - 1] + th > ys[first]:
        r -= 1
    return range(r, end)


def strip_lr_rows(h: int, ys: List[int], rows: Tuple[int, int]) -> Tuple[int, int]:
    """LR rows [y0, y1) whose outputs the tile rows ``rows`` hand out (see :func:`tiled_forward`)."""
    first, end = rows
    return ys[first], (ys[end] if end < len(ys) else h)


def check_tile_args(tile: int, overlap: int, margin: int, batch: int) -> None:
    """Programming-error checks of :func:`tiled_forward`'s arguments (users get OptionError earlier)."""
    if tile <= 0:
        raise ValueError(f'tile size must be positive, got {tile}')
    if not 0 <= overlap < tile:
        raise ValueError(f'tile overlap must be in [0, tile size={tile}), got {overlap}')
    if not 0 <= 2 * margin <= overlap:
        raise ValueError(f'tile margin must be between 0 and half the overlap ({overlap}), got {margin}')
    if batch < 1:
        raise ValueError(f'tile batch must be >= 1, got {batch}')


def axis_weights(starts: List[int], size: int, length: int, scale: int, overlap: int, margin: int,
                 device=None) -> List[torch.Tensor]:
    """Per-tile 1-D blend weights at output resolution, normalised to sum to one over tiles.

    Returns one tensor of ``size * scale`` weights per start: 0 within ``margin`` LR pixels of an
    inner tile edge, then a linear ramp over ``overlap - 2 * margin`` pixels, then 1.
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


class _OutputBlend:
    """One output of the network (SR image, or one semantic map) being blended at its own scale.

    Holds the window of the current tile row (rows [top, bot), columns from ``win_x0``), the
    previous row's lower overlap (``carry``) and this row's (``below``); hands final pixels to ``put``.
    """

    def __init__(self, index, scale, channels, grid, size, out_device, put, weights):
        self.i, self.s, self.c, self.grid = index, scale, channels, grid
        self.b, self.h, self.w = size
        self.dev, self.put = out_device, put
        self.wy, self.wx = weights
        self.carry = None

    def start_row(self, r):
        th, _, ys, _ = self.grid
        s, y0 = self.s, ys[r]
        self.r, self.top, self.bot = r, y0 * s, (y0 + th) * s
        self.done_y = (ys[r + 1] if r + 1 < len(ys) else self.h) * s
        self.win_x0 = 0
        self.win = torch.zeros(self.b, self.c, self.bot - self.top, 0, device=self.dev)
        self.below = torch.zeros(self.b, self.c, self.bot - self.done_y, self.w * s, device=self.dev)

    def add(self, c, block):
        """Add tile ``c`` of the current row, (B, C, th*s, tw*s) float32, then emit what is final."""
        _, tw, _, xs = self.grid
        s = self.s
        xa, xb = xs[c] * s, (xs[c] + tw) * s
        win_x1 = self.win_x0 + self.win.shape[-1]
        if xb > win_x1:  # widen the window, starting from what the previous row left there
            ext = self.win.new_zeros(self.b, self.c, self.bot - self.top, xb - win_x1)
            if self.carry is not None:
                ext[:, :, :self.carry.shape[2]] = self.carry[..., win_x1:xb]
            self.win = torch.cat([self.win, ext], dim=3)
        lo = xa - self.win_x0
        self.win[..., lo:lo + tw * s] += block * (self.wy[self.r][:, None] * self.wx[c][None, :])
        self.flush((xs[c + 1] if c + 1 < len(xs) else self.w) * s)

    def flush(self, upto):
        """Columns [win_x0, upto) of the current tile row are final: emit them, keep their lower overlap."""
        n = upto - self.win_x0
        if n <= 0:
            return
        cols = self.win[..., :n]
        final = self.done_y - self.top
        self.put(self.i, self.top, self.done_y, self.win_x0, upto, cols[:, :, :final])
        self.below[..., self.win_x0:upto] = cols[:, :, final:]
        self.win, self.win_x0 = self.win[..., n:], upto

    def end_row(self):
        self.carry, self.below = self.below, None


def _run_tiles(fn, lq, grid, r, cols, h, w):
    """``fn`` on the tiles ``cols`` of tile row ``r``, a failure re-raised as :class:`TileError` naming them."""
    th, tw, ys, _ = grid
    y0 = ys[r]
    tiles = torch.cat([lq[:, :, y0:y0 + th, x0:x0 + tw] for x0 in cols])
    try:
        out = fn(tiles)
    except Exception as e:  # noqa: BLE001 - re-raised with the position
        pos = ', '.join(f'x {x0}:{x0 + tw}' for x0 in cols)
        raise TileError(f'tiled inference failed on tile row {r + 1}/{len(ys)} (LR rows {y0}:{y0 + th}; '
                        f'columns {pos}) of a {h}x{w} image: {type(e).__name__}: {e}') from e
    return (True, (out, )) if isinstance(out, torch.Tensor) else (False, tuple(out))


def _output_scale(o, th, tw):
    s = o.shape[-2] // th
    if s < 1 or o.shape[-2] != s * th or o.shape[-1] != s * tw:
        raise TileError(f'tile output of shape {tuple(o.shape)} is not an integer multiple of the tile size {th}x{tw}')
    return s


def tiled_forward(fn: Callable[[torch.Tensor], Outputs], lq: torch.Tensor, tile: int, overlap: int = DEFAULT_OVERLAP,
                  *, margin: Optional[int] = None, multiple: int = 1, batch: int = 1,
                  device: Optional[torch.device] = None, out_device: Optional[torch.device] = None,
                  sink: Optional[Sink] = None, progress: Optional[Callable[[int], None]] = None,
                  rows: Optional[Tuple[int, int]] = None) -> Optional[Outputs]:
    """Run ``fn`` over overlapping tiles of ``lq`` (B, C, H, W) and blend the results.

    ``fn`` maps a batch of tiles (n*B, C, h, w) on ``device`` to one tensor (n*B, C', h*s, w*s) or a
    tuple of them, each with its own integer scale s (e.g. SR at x4 and semantic maps at x1).
    ``tile``/``overlap``/``margin`` are LR pixels; ``tile`` is rounded up to ``multiple``; ``margin``
    (default ``overlap // 4``) is the strip at inner tile edges that gets zero weight. ``batch`` tiles
    of a tile row go through ``fn`` at once. ``lq`` may be any object with ``shape`` and 4-D slicing.

    Without ``sink`` returns the blended output(s), float32 on ``out_device`` (default: ``lq.device``).
    With ``sink``, every output pixel is handed over exactly once, as soon as no later tile touches it:
    ``sink(output_index, row0, row1, col0, col1, block)`` with block (B, C', row1-row0, col1-col0).
    A failing tile raises :class:`TileError` naming its position.

    ``rows=(first, end)`` (with ``sink``): only the pixels of tile rows first..end-1 are handed over
    (LR rows :func:`strip_lr_rows`), bit-identical to a whole run: the earlier rows that reach into them
    are run too (:func:`rows_to_run`) but not handed over. Ranks share one scene this way.
    """
    margin = overlap // 4 if margin is None else margin
    check_tile_args(tile, overlap, margin, batch)
    device = lq.device if device is None else device
    out_device = lq.device if out_device is None else out_device
    b, _, h, w = lq.shape
    grid = tile_grid(h, w, tile, overlap, multiple)
    ys, xs = grid[2], grid[3]
    blender = _Blender(grid, (b, h, w), overlap, margin, out_device, sink)
    single = False
    if rows is not None and sink is None:
        raise ValueError('tiled_forward(rows=...) hands a strip of rows to a sink; pass sink')
    run = range(len(ys)) if rows is None else rows_to_run(ys, grid[0], rows)
    for r in run:
        blender.emit = rows is None or r >= rows[0]
        for c0 in range(0, len(xs), batch):
            cols = xs[c0:c0 + batch]
            single, out = _run_tiles(lambda t: fn(t.to(device)), lq, grid, r, cols, h, w)
            blender.add(r, c0, len(cols), out)
            del out
            if progress is not None:
                progress(len(cols))
        blender.end_row()
    if sink is not None:
        return None
    return blender.results[0] if single else tuple(blender.results)


class _Blender:
    """Every output of a tiled run (SR, semantic maps), each blended at its own scale; final pixels go to
    ``sink`` or into ``results``."""

    def __init__(self, grid, size, overlap, margin, out_device, sink):
        self.grid, self.size, self.overlap, self.margin = grid, size, overlap, margin
        self.out_device, self.sink = out_device, sink
        self.blends: List[_OutputBlend] = []
        self.results: List[torch.Tensor] = []
        self.weights: Dict[int, tuple] = {}
        self.emit = True  # False while running the rows before a strip (see tiled_forward's rows)

    def put(self, i, r0, r1, c0, c1, block):
        if not self.emit:
            return
        if self.sink is not None:
            self.sink(i, r0, r1, c0, c1, block)
        else:
            self.results[i][:, :, r0:r1, c0:c1] = block

    def _start(self, out):
        th, tw, ys, xs = self.grid
        b, h, w = self.size
        for i, o in enumerate(out):
            s = _output_scale(o, th, tw)
            if s not in self.weights:
                self.weights[s] = (axis_weights(ys, th, h, s, self.overlap, self.margin, self.out_device),
                                   axis_weights(xs, tw, w, s, self.overlap, self.margin, self.out_device))
            self.blends.append(_OutputBlend(i, s, o.shape[1], self.grid, self.size, self.out_device, self.put,
                                            self.weights[s]))
            if self.sink is None:
                self.results.append(torch.empty(b, o.shape[1], h * s, w * s, device=self.out_device))

    def add(self, r, c0, n, out):
        """Outputs of tiles c0..c0+n-1 of tile row r, each (n*B, C', th*s, tw*s)."""
        if not self.blends:
            self._start(out)
        b = self.size[0]
        for blend, o in zip(self.blends, out):
            if c0 == 0:
                blend.start_row(r)
            o = o.to(self.out_device, torch.float32)
            for j in range(n):
                blend.add(c0 + j, o[j * b:(j + 1) * b])

    def end_row(self):
        for blend in self.blends:
            blend.end_row()
