"""ONNX export of the paper configuration (HAT + ViT-B/16 CLIP, random weights) and its CPU speed.

    .venv/bin/python benchmarks/bench_export.py --tile 64 --threads 2 --repeats 5

Builds network_g of options/train_SeGSR_HAT_x4.yml with ``clip_pretrained: null`` (random CLIP weights:
same graph and cost, no download), merges LoRA, exports it with :func:`segsr_basicsr.inference.onnx_export.
export_onnx` (verified against PyTorch as segsr-export does) and reports the file size and export time.
Then onnxruntime (CPU) and PyTorch (CPU, no_grad) run the same LR tile, interleaved (ORT, PyTorch, ORT,
...) so load hits both alike: median seconds per tile, spread (IQR / median), the load average before
and after, threads and versions.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_segsr import network_options  # noqa: E402  (benchmarks/: the paper config without downloads)
from timing import interleaved_times, spread  # noqa: E402

import segsr_basicsr  # noqa: E402,F401  (compat layer before basicsr)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--config', default='paper', help='paper | tiny | an option file (network_g)')
    p.add_argument('--tile', type=int, default=64, help='fixed LR tile (default 64)')
    p.add_argument('--threads', type=int, default=2, help='CPU threads for both runtimes')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--fp16', action='store_true')
    p.add_argument('--keep', default=None, help='keep the .onnx file here')
    args = p.parse_args()
    import onnxruntime as ort
    from basicsr.archs import build_network

    from segsr_basicsr.inference.onnx_export import export_onnx
    from segsr_basicsr.inference.onnx_net import OnnxNetwork
    torch.set_num_threads(args.threads)
    print(f'torch {torch.__version__}, onnxruntime {ort.__version__}, threads {args.threads}, CPU, '
          f'load before {os.getloadavg()}', flush=True)
    torch.manual_seed(0)
    net = build_network(network_options(args.config)).eval()
    net.merge_lora()
    params = sum(p.numel() for p in net.parameters()) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.keep or Path(tmp) / 'segsr.onnx')
        t0 = time.perf_counter()
        report = export_onnx(net, path, tile=args.tile, fp16=args.fp16, threads=args.threads)
        total = time.perf_counter() - t0
        print(f'{args.config}: {params:.1f} M parameters, tile {args.tile} x{report["scale"]}, '
              f'{"fp16" if args.fp16 else "fp32"}, opset {report["opset"]}: file {report["size_bytes"] / 1e6:.1f} MB, '
              f'export {report["export_seconds"]:.1f} s (with references and verification {total:.1f} s)', flush=True)
        for c in report['checks']:
            print(f'  verified: {c["check"]} {c["output"]} max |diff| {c["max_abs_diff"]:.3g} '
                  f'(tolerance {report["tolerance"]:g})')
        onnx_net = OnnxNetwork(path, threads=args.threads)
        x = torch.rand(1, 3, args.tile, args.tile, generator=torch.Generator().manual_seed(1))

        def run_torch():
            with torch.no_grad():
                net(x)

        times = interleaved_times({'onnxruntime': lambda: onnx_net(x), 'pytorch': run_torch},
                                  torch.device('cpu'), warmup=1, repeats=args.repeats)
    for name, ts in times.items():
        wall = [t[0] for t in ts]
        print(f'  {name:12s} {statistics.median(wall):.3f} s/tile (median of {len(wall)}, spread '
              f'{100 * spread(wall):.0f} %)')
    ratio = [a[0] / b[0] for a, b in zip(times['onnxruntime'], times['pytorch'])]
    print(f'  onnxruntime / pytorch: {statistics.median(ratio):.2f} (per-round median, spread '
          f'{100 * spread(ratio):.0f} %); load after {os.getloadavg()}')


if __name__ == '__main__':
    main()
