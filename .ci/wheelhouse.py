"""Build an offline wheelhouse: every dependency of segsr_basicsr except torch/torchvision, as wheels.

For air-gapped GPU machines that already have torch (HPC clusters, containers without internet)::

    python .ci/wheelhouse.py --python-version 3.12 --out wheelhouse           # make wheelhouse PYVER=3.12
    pip install --no-index --find-links wheelhouse segsr_basicsr               # on the GPU machine

Steps: build basicsr 1.4.2 (an sdist on PyPI) and this package into wheels once; let pip resolve the
whole dependency tree for the *target* Python and manylinux x86_64 (``pip install --dry-run --report``,
metadata only: no torch download), held to the exact versions of the lock (``requirements/lock.txt``, the
same that ``make install`` uses: its pins become pip constraints); keep what is reachable from segsr_basicsr without passing through
torch/torchvision (so torch's own CUDA libraries, triton, sympy, ... stay out); download exactly those
wheels. Wheels in ``--out`` that are not part of the new set are removed, so the folder always holds
one consistent set (``requirements.txt`` beside them lists it).
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parents[1]
BASICSR = 'basicsr==1.4.2'
LOCK = REPO / 'requirements' / 'lock.txt'
#: what the target machine brings itself (a CUDA build matching its driver)
DEFAULT_EXCLUDE = ('torch', 'torchvision')


def manylinux_platforms(glibc: str, arch: str):
    """pip --platform tags a glibc-``glibc`` x86_64 machine accepts: manylinux_2_<glibc>..2_17, 2014, 2010, 1."""
    major, minor = (int(p) for p in glibc.split('.'))
    if major != 2 or minor < 17:
        raise SystemExit(f'--glibc {glibc}: give a glibc version >= 2.17, e.g. 2.28 (what torch >= 2.6 needs)')
    tags = [f'manylinux_2_{m}_{arch}' for m in range(minor, 16, -1)]
    return tags + [f'manylinux2014_{arch}', f'manylinux2010_{arch}', f'manylinux1_{arch}']


def target_flags(python_version: str, glibc: str, arch: str):
    """pip flags selecting binary wheels for CPython ``python_version`` on manylinux ``arch``."""
    abi = 'cp' + python_version.replace('.', '')
    flags = ['--only-binary', ':all:', '--python-version', python_version, '--implementation', 'cp', '--abi', abi]
    for tag in manylinux_platforms(glibc, arch):
        flags += ['--platform', tag]
    return flags


def pip(*args, quiet=True):
    cmd = [sys.executable, '-m', 'pip', *args] + (['--quiet'] if quiet else [])
    proc = subprocess.run(cmd, text=True, capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f'pip {args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}')
    return proc


def build_local_wheels(dest: Path):
    """basicsr 1.4.2 (sdist only on PyPI) and this repository, built once into wheels in ``dest``."""
    pip('wheel', '--no-deps', '--no-build-isolation', '-w', str(dest), BASICSR)
    with tempfile.TemporaryDirectory() as src:  # a clean copy: a stale build/ would leak removed modules
        shutil.copytree(REPO, src, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns('.git', '.venv', 'build', 'dist', '*.egg-info', 'wheelhouse*',
                                                      'experiments', 'results', 'tb_logger', 'demo_data',
                                                      '__pycache__', '.pytest_cache'))
        pip('wheel', '--no-deps', '--no-build-isolation', '-w', str(dest), src)
    return sorted(dest.glob('*.whl'))


def lock_constraints(lock: Path, dest: Path) -> Path:
    """The lock's ``name==version ; marker`` lines (no hashes, no comments) as a pip constraints file."""
    text = re.sub(r'\\\n', ' ', Path(lock).read_text())  # join continuation lines
    pins = [re.sub(r'\s+--hash=\S+', '', line).strip() for line in text.splitlines()]
    path = dest / 'lock-constraints.txt'
    path.write_text('\n'.join(p for p in pins if p and not p.startswith(('#', '-'))) + '\n')
    return path


def resolve(root: str, local: Path, flags, lock=None):
    """pip's resolution of ``root`` for the target, within the lock's versions when ``lock`` is given:
    {name: (version, requires_dist)}; metadata only."""
    report = local / 'report.json'
    held = ['--constraint', str(lock_constraints(lock, local))] if lock else []
    pip('install', '--dry-run', '--ignore-installed', '--report', str(report), '--find-links', str(local), *flags,
        *held, root)
    out = {}
    for item in json.loads(report.read_text())['install']:
        meta = item['metadata']
        out[canonicalize_name(meta['name'])] = (meta['version'], meta.get('requires_dist') or [])
    return out


def closure(root: str, resolved: dict, exclude, env: dict):
    """Names reachable from ``root`` for the target ``env`` without entering an ``exclude`` package."""
    exclude = {canonicalize_name(n) for n in exclude}
    start = Requirement(root)
    todo, seen = [(canonicalize_name(start.name), frozenset(start.extras))], set()
    while todo:
        name, extras = todo.pop()
        if name in exclude or (name, extras) in seen:
            continue
        seen.add((name, extras))
        if name not in resolved:
            raise SystemExit(f'{name} is required but pip did not resolve it for the target; is it sdist-only?')
        for spec in resolved[name][1]:
            req = Requirement(spec)
            if req.marker is None or any(req.marker.evaluate(dict(env, extra=e)) for e in ({''} | set(extras))):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return sorted({name for name, _ in seen})


def installed_names(path):
    """Package names of a ``pip list --format=freeze`` / ``pip freeze`` / one-name-per-line file."""
    names = []
    for line in Path(path).read_text().splitlines():
        line = line.split('#', 1)[0].strip()
        if line and not line.startswith('-'):
            names.append(re.split(r'[\s=<>!~;@\[]', line, maxsplit=1)[0])
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--python-version', default='3.12', help='target CPython, e.g. 3.12 (default) or 3.11')
    parser.add_argument('--out', default='wheelhouse', help='output folder (default: wheelhouse)')
    parser.add_argument('--extras', default='', help="extras of segsr_basicsr to include, e.g. 'geo' (rasterio)")
    parser.add_argument('--glibc', default='2.28', help='oldest glibc of the target machines (default 2.28)')
    parser.add_argument('--arch', default='x86_64')
    parser.add_argument('--exclude', nargs='*', default=list(DEFAULT_EXCLUDE),
                        help='packages the target brings itself (default: torch torchvision)')
    parser.add_argument('--installed', help='file listing what the target already has (`pip list --format=freeze` '
                                            'there; names or name==version lines): left out too, for a small '
                                            'wheelhouse installed with --no-deps')
    parser.add_argument('--lock', default=str(LOCK),
                        help="lock file whose versions the wheelhouse holds (default: requirements/lock.txt; "
                             "'' resolves today's releases instead)")
    args = parser.parse_args(argv)
    if args.installed:
        args.exclude = list(args.exclude) + installed_names(args.installed)
    if not all(p.isdigit() for p in args.python_version.split('.')) or args.python_version.count('.') != 1:
        raise SystemExit(f'--python-version {args.python_version!r}: give major.minor, e.g. 3.12')

    flags = target_flags(args.python_version, args.glibc, args.arch)
    root = f'segsr_basicsr[{args.extras}]' if args.extras else 'segsr_basicsr'
    env = dict(default_environment(), python_version=args.python_version,
               python_full_version=args.python_version + '.0', implementation_name='cpython',
               platform_python_implementation='CPython', sys_platform='linux', platform_system='Linux',
               os_name='posix', platform_machine=args.arch)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)
        print(f'Building {BASICSR} and segsr_basicsr wheels ...', flush=True)
        built = build_local_wheels(local)
        print(f'Resolving {root} for CPython {args.python_version} manylinux (glibc >= {args.glibc}) '
              f'{args.arch} ...', flush=True)
        resolved = resolve(root, local, flags, args.lock or None)
        names = closure(root, resolved, args.exclude, env)
        pins = [f'{n}=={resolved[n][0]}' for n in names]
        local_names = {canonicalize_name(parse_wheel_filename(w.name)[0]) for w in built}
        remote = [p for n, p in zip(names, pins) if n not in local_names]
        left_out = ', '.join(args.exclude[:6]) + (f' and {len(args.exclude) - 6} more' if len(args.exclude) > 6 else '')
        print(f'Downloading {len(remote)} wheels (leaving out {left_out} and what only they need) ...', flush=True)
        pip('download', '--no-deps', '-d', str(out), *flags, *remote)
        for wheel in built:
            shutil.copy2(wheel, out / wheel.name)

    keep = set(names)
    removed = 0
    for wheel in out.glob('*.whl'):
        name, version = parse_wheel_filename(wheel.name)[:2]
        if canonicalize_name(name) not in keep or str(version) != resolved[canonicalize_name(name)][0]:
            wheel.unlink()
            removed += 1
    (out / 'requirements.txt').write_text(
        f'# {root} for CPython {args.python_version} manylinux {args.arch} (glibc >= {args.glibc}); '
        f'not included: {" ".join(args.exclude)}\n' + '\n'.join(pins) + '\n')

    wheels = sorted(out.glob('*.whl'), key=lambda p: p.stat().st_size, reverse=True)
    total = sum(w.stat().st_size for w in wheels)
    print(f'{out}: {len(wheels)} wheels, {total / 2**20:.1f} MiB' + (f' ({removed} old wheels removed)' if removed
                                                                     else ''))
    for w in wheels[:5]:
        print(f'  {w.stat().st_size / 2**20:6.1f} MiB  {w.name}')
    if args.installed:
        print(f'Left out what {args.installed} lists, so pip would ask for those: install without the resolver, '
              f'e.g. pip install --no-index --no-deps --target SITE {out}/*.whl; export PYTHONPATH=SITE')
    else:
        print(f'Install (with torch already installed): pip install --no-index --find-links {out} "{root}"')


if __name__ == '__main__':
    main()
