"""Peak memory of tiled inference vs scene size, at a fixed tile size (CPU).

    .venv/bin/python benchmarks/bench_tiling.py                      # 1024 and 2048 LR, tile 256, tiny EDSR x4
    .venv/bin/python benchmarks/bench_tiling.py --net hat --sizes 512 1024
    .venv/bin/python benchmarks/bench_tiling.py --untiled 512         # contrast: one whole-image forward

Each scene runs in a fresh process through the same code path as
``segsr_basicsr.api`` (``SeGSRUpscaler.upscale``: uint8 scene in, uint8 SR out, blended
band by band). Printed per scene: peak RSS, the RSS before the scene was made
(python + torch + net), the unavoidable scene buffers (uint8 LR in, uint8 SR
out) and what is left: the working set of the tiling, which
should not grow with the scene.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

from segsr_basicsr.archs.tiny_configs import TINY_EDSR, TINY_HAT  # noqa: E402

NETS = {
    'edsr': dict(TINY_EDSR, num_feat=16, num_block=4),
    'hat': dict(type='SeGSR_HAT', **TINY_HAT),
}


def rss_mb():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    return float('nan')


def child(args):
    import numpy as np
    import torch

    import segsr_basicsr  # noqa: F401
    from basicsr.archs import build_network
    from segsr_basicsr.api import SeGSRUpscaler
    torch.set_num_threads(args.threads)
    net = build_network(dict(NETS[args.net])).eval()
    with torch.no_grad():  # warm up allocators / kernels on one small tile
        net(torch.rand(1, 3, 32, 32))
    base = rss_mb()
    rng = np.random.default_rng(0)
    n = args.size
    scene = np.repeat(np.repeat(rng.integers(0, 256, (n // 8, n // 8, 3), dtype=np.uint8), 8, 0), 8, 1)
    t0 = time.perf_counter()
    sr = SeGSRUpscaler(net, 'cpu').upscale(scene, tile=args.tile, overlap=args.overlap, batch=args.batch)
    dt = time.perf_counter() - t0
    assert sr.shape == (4 * n, 4 * n, 3)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    buffers = (scene.nbytes + sr.nbytes) / 2**20
    print(json.dumps(dict(size=n, tile=args.tile, peak_mb=peak, base_mb=base, buffers_mb=buffers,
                          working_mb=peak - base - buffers, seconds=dt)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--sizes', type=int, nargs='+', default=[1024, 2048], help='LR scene sizes (square)')
    p.add_argument('--tile', type=int, default=256)
    p.add_argument('--overlap', type=int, default=32)
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--net', choices=sorted(NETS), default='edsr')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--untiled', type=int, nargs='*', default=[], help='also run these sizes without tiling')
    p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--size', type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    print(f'net={args.net} x4, tile={args.tile} overlap={args.overlap} batch={args.batch}, '
          f'threads={args.threads}, CPU')
    print(f'{"LR scene":>10} {"tile":>6} {"peak RSS":>10} {"before":>8} {"scene bufs":>11} {"working":>9} '
          f'{"time":>8}')
    runs = [(n, args.tile) for n in args.sizes] + [(n, 0) for n in args.untiled]
    for n, tile in runs:
        cmd = [sys.executable, __file__, '--child', '--size', str(n), '--tile', str(tile), '--overlap',
               str(args.overlap), '--batch', str(args.batch), '--net', args.net, '--threads', str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(
            args.threads)))
        if out.returncode:
            sys.exit(f'scene {n}: failed\n{out.stderr}')
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f'{n:>5}x{n:<4} {tile or "none":>6} {r["peak_mb"]:>8.0f}MB {r["base_mb"]:>6.0f}MB '
              f'{r["buffers_mb"]:>9.0f}MB {r["working_mb"]:>7.0f}MB {r["seconds"]:>7.1f}s', flush=True)


if __name__ == '__main__':
    main()
