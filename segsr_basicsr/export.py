"""Deploy a trained network outside PyTorch: one verified ONNX file (onnxruntime, QGIS Deepness), safetensors.

    segsr-export --model net_g_latest.pth --output segsr_x4.onnx --tile 256 --deepness --resolution 30
    segsr-export --model net_g_latest.pth --output segsr_x4_dyn.onnx --dynamic --tile 64
    segsr-export --model net_g_latest.pth --safetensors net_g_latest.safetensors

The ONNX file holds the whole network (LoRA merged, the CLIP tower inside) and appears only after
onnxruntime reproduced PyTorch on a random and a real (``--check-image``, else synthetic) tile within
``--tolerance``. Existing files are never replaced without ``--overwrite``, the checkpoint never.
Argument parsing over :func:`segsr_basicsr.api.build_from_checkpoint` (the checkpoint read once) and
:mod:`segsr_basicsr.inference.onnx_export`;
see docs/export.md.
"""
import argparse
import os

import segsr_basicsr  # noqa: F401,I001  (compat layer + registration, before basicsr)

from segsr_basicsr.errors import InferError
from segsr_basicsr.utils.cli import exit_on_user_error

PROG = 'segsr-export'


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', required=True, help='checkpoint (.pth or .safetensors) written by training')
    p.add_argument('-opt', default=None, help='option file with network_g (checkpoints that do not carry it)')
    p.add_argument('--param-key', default=None, help='params_ema (default when present) or params')
    p.add_argument('--output', help='the ONNX file to write')
    p.add_argument('--tile', type=int, default=None, help='fixed LR tile size (default 256); with --dynamic '
                      'the example size')
    p.add_argument('--dynamic', action='store_true', help='any LR height/width that is a multiple of the '
                   "network's window (printed); not for Deepness")
    p.add_argument('--fp16', action='store_true', help='half-precision weights and compute, float32 input/output')
    p.add_argument('--opset', type=int, default=18, help='ONNX opset (default 18)')
    p.add_argument('--maps', action='store_true', help='also output the semantic maps (QA; not for Deepness)')
    p.add_argument('--deepness', action='store_true', help="write QGIS Deepness' metadata, check its rules")
    p.add_argument('--resolution', type=float, default=None, help='Deepness: LR ground resolution, cm/px')
    p.add_argument('--overlap', type=int, default=None, help='Deepness: tile overlap in percent (default: '
                   '32 LR pixels, at most a quarter of the tile)')
    p.add_argument('--tolerance', type=float, default=None, help='max |diff| onnxruntime vs PyTorch (default '
                   '1e-4; 2e-2 with --fp16)')
    p.add_argument('--check-image', default=None, help='an image whose centre is the real check tile')
    p.add_argument('--safetensors', default=None, help='also write the weights as .safetensors (+ options)')
    p.add_argument('--all-weights', action='store_true', help='safetensors: also the frozen CLIP weights')
    p.add_argument('--threads', type=int, default=None, help='onnxruntime threads for the check')
    p.add_argument('--overwrite', action='store_true', help='replace existing output files')
    return p.parse_args(argv)


def check_args(args):
    """Option combinations and output paths, before the checkpoint is read."""
    from segsr_basicsr.io.atomic import check_free
    from segsr_basicsr.utils.preflight import check_file_outputs
    outputs = [o for o in (args.output, args.safetensors) if o]
    if not outputs:
        raise InferError('nothing to write: give --output model.onnx and/or --safetensors weights.safetensors.')
    if str(args.model).lower().endswith('.onnx'):
        raise InferError(f'--model {args.model}: is already an ONNX file; segsr-export reads a .pth or .safetensors '
                         'checkpoint.')
    if args.output and not args.output.lower().endswith('.onnx'):
        raise InferError(f'--output {args.output}: name an .onnx file.')
    if args.safetensors and not args.safetensors.lower().endswith('.safetensors'):
        raise InferError(f'--safetensors {args.safetensors}: name a .safetensors file.')
    if args.output is None and (args.deepness or args.maps or args.fp16 or args.dynamic):
        raise InferError('--deepness, --maps, --fp16 and --dynamic shape the ONNX file: give --output too.')
    if args.overlap is not None and not 0 <= args.overlap < 100:
        raise InferError(f'--overlap is a percentage of the tile in [0, 100), got {args.overlap}.')
    if args.tolerance is not None and not args.tolerance > 0:
        raise InferError(f'--tolerance must be > 0, got {args.tolerance}.')
    check_file_outputs(args.model, outputs)
    if not args.overwrite:
        check_free(*outputs)


def load_network(args):
    """The checkpoint's network (CPU, eval, LoRA not merged), its metadata ({network_g, scale}) and the
    state_dict it was loaded with; the checkpoint is read once."""
    from segsr_basicsr.api import SeGSRUpscaler, build_from_checkpoint
    from segsr_basicsr.io.checkpoint import META_KEY, network_metadata
    net, net_opt, state = build_from_checkpoint(args.model, args.opt, args.param_key)
    scale = SeGSRUpscaler(net.eval()).scale
    meta = network_metadata({'network_g': net_opt, 'scale': scale})[META_KEY]  # plain, JSON-able
    return net, meta, state


def write_safetensors(args, net, meta, state):
    """The checkpoint's tensors as they are (frozen CLIP weights from a named source are not in it), or with
    ``--all-weights`` every parameter and buffer of the (unmerged) network."""
    from segsr_basicsr.io.checkpoint import save_safetensors
    if args.all_weights:
        full = dict(net.state_dict())
        full.update({k: p for k, p in net.named_parameters() if k not in full})
        state = {**full, **state}
    save_safetensors(state, meta, args.safetensors)
    size = os.path.getsize(args.safetensors) / 1e6
    print(f'{PROG}: wrote {args.safetensors} ({len(state)} tensors, {size:.1f} MB)', flush=True)


def check_image(path, tile):
    """``--check-image`` as (H, W, 3) float32 RGB in [0, 1] (the exporter takes its centre)."""
    if path is None:
        return None
    import numpy as np

    from segsr_basicsr.io.images import read_image
    img = read_image(path)[..., ::-1]
    top = float(np.iinfo(img.dtype).max) if img.dtype.kind in 'ui' else 1.0
    return np.ascontiguousarray(img, dtype=np.float32) / top


def write_onnx(args, net, meta):
    from segsr_basicsr.inference.onnx_export import TOLERANCE, dynamic_multiple, export_onnx
    from segsr_basicsr.inference.tiling import default_overlap
    tile = args.tile or 256
    deepness = None
    if args.deepness:
        overlap = args.overlap if args.overlap is not None else round(100 * default_overlap(tile) / tile)
        deepness = {'overlap_percent': overlap, 'resolution_cm': args.resolution}
    report = export_onnx(net, args.output, tile=tile, dynamic=args.dynamic, fp16=args.fp16, opset=args.opset,
                         maps=args.maps, deepness=deepness, tolerance=args.tolerance,
                         check_image=check_image(args.check_image, tile), name=os.path.basename(args.model),
                         metadata={'network_g': meta['network_g']}, threads=args.threads)
    s = report['scale']
    size = f'LR sizes: multiples of {dynamic_multiple(net)}' if args.dynamic else \
        f'{tile}x{tile} -> {tile * s}x{tile * s}'
    print(f'{PROG}: wrote {args.output} ({report["size_bytes"] / 1e6:.1f} MB, export {report["export_seconds"]:.1f} s): '
          f'x{s}, {size}, {"fp16" if args.fp16 else "fp32"}, opset {args.opset}'
          f'{", Deepness metadata" if deepness else ""}', flush=True)
    diffs = '; '.join(f'{c["check"]} {c["output"]} {c["max_abs_diff"]:.2g}' for c in report['checks'])
    print(f'{PROG}: onnxruntime (CPU) vs PyTorch max |diff|: {diffs} (tolerance {report["tolerance"]:g}; '
          f'default {TOLERANCE["fp16" if args.fp16 else "fp32"]:g})', flush=True)


def main(argv=None):
    args = parse_args(argv)
    with exit_on_user_error(PROG):
        check_args(args)
        if args.output:
            try:
                import onnx  # noqa: F401
                import onnxruntime  # noqa: F401
                import onnxscript  # noqa: F401
            except ImportError as e:
                raise InferError(f"ONNX export needs the export extra ({e.name} is missing): "
                                 "pip install 'segsr_basicsr[export]'.") from None
        net, meta, state = load_network(args)
        if args.safetensors:
            write_safetensors(args, net, meta, state)
        if args.output:
            if callable(getattr(net, 'merge_lora', None)):  # GuidedBackbone; plain BasicSR archs have no LoRA
                net.merge_lora()
            write_onnx(args, net, meta)


if __name__ == '__main__':
    main()
