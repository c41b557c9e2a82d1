"""Time of segsr-infer on one GeoTIFF: this tree without --quality, with --quality-map, and another tree
(e.g. the commit before --quality existed) without it; interleaved runs, median wall time per setting.

    python benchmarks/make_demo_net.py --out /tmp/demo_net.pth
    git archive <before> | tar -x -C /tmp/before
    python benchmarks/bench_quality.py --model /tmp/demo_net.pth --before /tmp/before --size 192 --repeat 3
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_scene(path, size):
    import rasterio
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, size // 8, size // 8), dtype=np.uint8).repeat(8, 1).repeat(8, 2)
    with rasterio.open(path, 'w', driver='GTiff', width=size, height=size, count=3, dtype='uint8', crs='EPSG:32633',
                       transform=rasterio.transform.from_origin(5e5, 4e6, 10, 10)) as dst:
        dst.write(img)


def run(tree, model, scene, out, extra):
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS='1')
    t0 = time.perf_counter()
    subprocess.run([sys.executable, '-m', 'segsr_basicsr.infer', '--model', model, '--input', str(scene),
                    '--output', str(out), '--tile', '64', '--tile-overlap', '16', '--no-progress', '--device', 'cpu',
                    '--overwrite', *extra], env=env, check=True, capture_output=True, cwd=tree)
    return time.perf_counter() - t0


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', required=True)
    p.add_argument('--before', required=True, help='a tree of the package without --quality')
    p.add_argument('--size', type=int, default=192)
    p.add_argument('--repeat', type=int, default=3)
    args = p.parse_args()
    here = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        scene = Path(tmp) / 'in' / 'scene.tif'
        scene.parent.mkdir()
        make_scene(scene, args.size)
        settings = {'before (no flag)': (Path(args.before), []), 'now, no flag': (here, []),
                    'now, --quality-map': (here, ['--quality-map'])}
        times = {k: [] for k in settings}
        for _ in range(args.repeat):
            for k, (tree, extra) in settings.items():
                times[k].append(run(tree, args.model, scene, Path(tmp) / k.replace(' ', '_'), extra))
        for k, ts in times.items():
            print(f'{k:22s} median {statistics.median(ts):6.2f} s  runs {" ".join(f"{t:.2f}" for t in ts)}')
