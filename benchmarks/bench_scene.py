"""Whole GeoTIFF scenes through the streaming path: peak memory and time per megapixel vs scene size (CPU).

    .venv/bin/python benchmarks/bench_scene.py                          # LR 1024², 4096², 8192² at x4, tiny EDSR
    .venv/bin/python benchmarks/bench_scene.py --sizes 1024 2048 --tile 256 --batch 2 --threads 2

Each scene is a synthetic 3-band uint8 GeoTIFF (tiled, deflate; same content statistics at
every size) written block by block by the benchmark itself, then super-resolved in a fresh
process by ``SeGSRUpscaler.upscale_raster`` (what ``segsr-infer`` runs): windowed reads on a
reader thread, the feathered tiler, block-aligned writes on a writer thread into a tiled
(Big)GeoTIFF. Printed per scene: peak RSS (VmHWM), RSS before the scene (python + torch +
GDAL + the net), wall and CPU seconds, seconds per LR megapixel, and the load average around
the run (the machine may be shared). Streaming should make peak RSS and s/MP flat in the
scene size: the last lines give largest/smallest ratios (target: <= 1.3 each).
Outputs are deleted after each run unless --keep (8192² at x4 is a 32768² output, ~1-3 GB).

``--ranks 1 2``: the same folder of scenes (``--sizes``, mixed) through ``segsr-infer`` as 1 rank x
``--threads`` threads and as ``torchrun`` N ranks x (threads / N) threads, interleaved ``--rounds``
times: median wall time, spread, scaling efficiency (t(1) / t(N)), and the load around each run.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

#: the tests' tiny SeGSR_EDSR (tests/test_infer.py, tests/test_scene.py): x4, 8 features, 2 blocks
from segsr_basicsr.archs.tiny_configs import TINY_EDSR  # noqa: E402


def status(key):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1]) / 1024
    return float('nan')


def make_scene(path, n, block=256):
    """n x n uint8 RGB GeoTIFF, written strip by strip: blurred blocky noise + a gradient (image-like)."""
    import cv2
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window
    prof = dict(driver='GTiff', width=n, height=n, count=3, dtype='uint8', crs='EPSG:32633',
                transform=from_origin(500000.0, 4200000.0, 10.0, 10.0), tiled=True, blockxsize=block,
                blockysize=block, compress='deflate', BIGTIFF='IF_SAFER')
    with rasterio.open(path, 'w', **prof) as dst:
        for y in range(0, n, block):
            h = min(block, n - y)
            rng = np.random.default_rng(y)
            noise = rng.integers(0, 256, (3, h // 8 + 1, n // 8 + 1), dtype=np.uint8)
            strip = np.repeat(np.repeat(noise, 8, 1), 8, 2)[:, :h, :n]
            strip = np.stack([cv2.GaussianBlur(b, (0, 0), 3) for b in strip])
            grad = (np.arange(n)[None, None, :] * 64 // n).astype(np.uint8)
            dst.write(np.clip(strip.astype(np.int16) // 2 + 64 + grad, 0, 255).astype(np.uint8),
                      window=Window(0, y, n, h))


def child(args):
    import torch

    import segsr_basicsr  # noqa: F401
    from basicsr.archs import build_network
    from segsr_basicsr.api import SeGSRUpscaler
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = SeGSRUpscaler(build_network(dict(TINY_EDSR)).eval(), device=args.device)
    with torch.no_grad():  # warm up kernels and allocators on one tile
        model.net(torch.rand(1, 3, args.tile, args.tile, device=model.device))
    base = status('VmRSS')
    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    st = model.upscale_raster(args.scene, args.out, tile=args.tile, overlap=args.overlap, batch=args.batch,
                            cog=args.cog, progress=args.progress)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps(dict(base_mb=base, peak_mb=status('VmHWM'), wall=wall, cpu=cpu, tiles=st['tiles'],
                          load0=load0, load1=os.getloadavg()[0], out_bytes=os.path.getsize(args.out))))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--sizes', type=int, nargs='+', default=[1024, 4096, 8192], help='LR scene sizes (square)')
    p.add_argument('--tile', type=int, default=256)
    p.add_argument('--overlap', type=int, default=32)
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--device', default='cpu')
    p.add_argument('--cog', action='store_true', help='write COGs (adds the overview pass)')
    p.add_argument('--workdir', default=None, help='where scenes and outputs go (default: a temporary folder)')
    p.add_argument('--keep', action='store_true', help='keep scenes and outputs')
    p.add_argument('--progress', action='store_true', help='progress lines from the child')
    p.add_argument('--ranks', type=int, nargs='+', help='compare segsr-infer over a folder with these rank counts')
    p.add_argument('--rounds', type=int, default=3, help='--ranks: interleaved rounds per rank count')
    p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--scene', help=argparse.SUPPRESS)
    p.add_argument('--out', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    if args.ranks:
        return ranks_main(args)

    import rasterio
    import torch
    work = args.workdir or tempfile.mkdtemp(prefix='bench_scene_')
    os.makedirs(work, exist_ok=True)
    print(f'tiny SeGSR_EDSR x4 (8 feat, 2 blocks), tile={args.tile} overlap={args.overlap} batch={args.batch}, '
          f'threads={args.threads}, device={args.device}, cpus={os.cpu_count()}, torch {torch.__version__}, '
          f'rasterio {rasterio.__version__} / GDAL {rasterio.__gdal_version__}{", COG" if args.cog else ""}')
    print(f'{"LR scene":>11} {"SR scene":>13} {"tiles":>6} {"peak RSS":>9} {"before":>8} {"wall":>8} {"CPU":>8} '
          f'{"wall s/MP":>9} {"CPU s/MP":>8} {"out MB":>7} {"load":>9}')
    rows = []
    for n in args.sizes:
        scene = os.path.join(work, f'scene_{n}.tif')
        out = os.path.join(work, f'scene_{n}_x4.tif')
        if not os.path.exists(scene):
            make_scene(scene, n)
        if os.path.exists(out):
            os.remove(out)
        cmd = [sys.executable, __file__, '--child', '--scene', scene, '--out', out, '--tile', str(args.tile),
               '--overlap', str(args.overlap), '--batch', str(args.batch), '--threads', str(args.threads),
               '--device', args.device] + (['--cog'] if args.cog else []) + (['--progress'] if args.progress else [])
        r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True,
                           env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        if r.returncode:
            sys.exit(f'scene {n}: failed (exit {r.returncode})')
        res = json.loads(r.stdout.strip().splitlines()[-1])
        mp = n * n / 1e6
        res.update(n=n, mp=mp, s_per_mp=res['wall'] / mp, cpu_per_mp=res['cpu'] / mp)
        rows.append(res)
        print(f'{n:>5}x{n:<5} {4 * n:>6}x{4 * n:<6} {res["tiles"]:>6} {res["peak_mb"]:>7.0f}MB {res["base_mb"]:>6.0f}MB '
              f'{res["wall"]:>7.1f}s {res["cpu"]:>7.1f}s {res["s_per_mp"]:>9.2f} {res["cpu_per_mp"]:>8.2f} '
              f'{res["out_bytes"] / 2**20:>7.0f} '
              f'{res["load0"]:>4.1f}-{res["load1"]:<4.1f}', flush=True)
        if not args.keep:
            os.remove(out)
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        print(f'largest/smallest: peak RSS {b["peak_mb"] / a["peak_mb"]:.2f}x, wall s per LR MP '
              f'{b["s_per_mp"] / a["s_per_mp"]:.2f}x, CPU s per LR MP {b["cpu_per_mp"] / a["cpu_per_mp"]:.2f}x '
              '(targets <= 1.3; on a shared machine the CPU time is the one to trust)')
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


def _infer_run(work, ckpt, ranks, threads, args):
    """One segsr-infer over ``work/in`` (fresh output folder) with ``ranks`` processes; (wall s, load before, after)."""
    out = os.path.join(work, f'out_{ranks}')
    shutil.rmtree(out, ignore_errors=True)
    infer = ['-m', 'segsr_basicsr.infer', '--model', ckpt, '--input', os.path.join(work, 'in'), '--output', out,
             '--tile', str(args.tile), '--tile-overlap', str(args.overlap), '--no-progress', '--device', 'cpu']
    cmd = [sys.executable, *infer] if ranks == 1 else \
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={ranks}', *infer]
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if r.returncode:
        sys.exit(f'{ranks} rank(s): failed (exit {r.returncode}): {r.stderr[-2000:]}')
    return time.perf_counter() - t0, load0, os.getloadavg()[0]


def ranks_main(args):
    """segsr-infer over one folder of mixed scenes: 1 rank x T threads against N ranks x T/N threads."""
    import statistics

    import torch
    from basicsr.archs import build_network

    from segsr_basicsr.io.checkpoint import network_metadata
    work = args.workdir or tempfile.mkdtemp(prefix='bench_ranks_')
    os.makedirs(os.path.join(work, 'in'), exist_ok=True)
    for i, n in enumerate(args.sizes):
        make_scene(os.path.join(work, 'in', f'scene{i}_{n}.tif'), n)
    ckpt = os.path.join(work, 'net.pth')
    torch.save({'params': build_network(dict(TINY_EDSR)).state_dict(),
                **network_metadata({'network_g': TINY_EDSR, 'scale': 4})}, ckpt)
    mp = sum(n * n for n in args.sizes) / 1e6
    print(f'segsr-infer over {len(args.sizes)} GeoTIFFs (LR {", ".join(map(str, args.sizes))}; {mp:.2f} LR MP), '
          f'tiny SeGSR_EDSR x4, tile {args.tile}, {args.threads} threads in all, cpus={os.cpu_count()}, '
          f'{args.rounds} interleaved rounds')
    times = {r: [] for r in args.ranks}
    for _ in range(args.rounds):
        for r in args.ranks:
            wall, l0, l1 = _infer_run(work, ckpt, r, max(1, args.threads // r), args)
            times[r].append(wall)
            print(f'  {r} rank(s) x {max(1, args.threads // r)} thread(s): {wall:.1f} s (load {l0:.1f}-{l1:.1f})',
                  flush=True)
    base = statistics.median(times[args.ranks[0]])
    for r, ts in times.items():
        med = statistics.median(ts)
        print(f'{r} rank(s): median {med:.1f} s (min {min(ts):.1f}, max {max(ts):.1f}), {mp / med:.3f} LR MP/s, '
              f'efficiency t({args.ranks[0]})/t({r}) = {base / med:.2f}')
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
