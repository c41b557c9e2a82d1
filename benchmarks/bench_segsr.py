"""SeG-SR cost vs plain HAT: time, peak memory, FLOPs and FLOP/s, in one run.

    .venv/bin/python benchmarks/bench_segsr.py                        # paper config, LR 64, x4, batch 1, CPU
    .venv/bin/python benchmarks/bench_segsr.py --config tiny --repeats 5
    .venv/bin/python benchmarks/bench_segsr.py --batch 4 --cases train --nets segsr --use-checkpoint
    .venv/bin/python benchmarks/bench_segsr.py --scaling --nets segsr spandrel   # LR 32/64/128 + tiled scene
    .venv/bin/python benchmarks/bench_segsr.py --profile --repeats 2            # where SeG-SR's time goes
    .venv/bin/python benchmarks/bench_segsr.py --throughput --only-throughput    # tiles/s over a 1024^2 LR scene
    .venv/bin/python benchmarks/bench_segsr.py --device cuda
    make bench                                       # = --threads 2 --throughput (docs/performance.md)

Nets (same backbone weights): ``segsr`` = our SeGSR_HAT with guidance, ``hat`` =
our SeGSR_HAT with ``guidance: null``, ``spandrel`` = spandrel's HAT (the
official HAT forward), and with ``--use-checkpoint`` ``segsr_ckpt`` (activation
checkpointing per SR unit). ``--config`` is ``paper`` (network_g of
options/train_SeGSR_HAT_x4.yml), ``tiny`` (the test-size net) or an option
file; CLIP weights are always random (``clip_pretrained: null``): same cost.

Cases: ``forward`` = inference as ``segsr_basicsr.infer`` runs it (eval,
no_grad, LoRA merged by ``merge_lora()`` as ``segsr-infer --merge-lora`` does, through
``forward_padded``); ``train`` = one step: forward, L1, backward, Adam step.

Timing: runs are interleaved (net A, B, C, matmul, A, B, C, matmul, ...) so
background load hits all alike; wall and process CPU time (the steadier one on
a shared machine). Ratios are against spandrel's HAT, taken per round (runs
seconds apart) and reported as their median with their spread (IQR / median);
rounds go on until every spread is under ``--target-spread`` (5 %) or the
budget (``--max-repeats``, ``--max-seconds``) ends, which the output says. The
load average is printed before, during and after, with a warning when other
jobs share the CPUs. The matmul (same device and dtype) gives the FLOP/s the hardware reaches
in the same conditions; "util" = achieved FLOP/s of the net / matmul FLOP/s.
FLOPs come from torch.utils.flop_counter (CPU flash-SDPA formulas added, it
does not count them itself). Peak memory: each (net, case) runs in a fresh
child process: peak RSS (and its growth over the RSS before the first run)
on CPU, torch.cuda.max_memory_allocated on CUDA.
"""
import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from timing import interleaved_until_steady, spread, sync  # benchmarks/timing.py

from segsr_basicsr.archs.tiny_configs import TINY_GUIDANCE, TINY_HAT  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAPER_OPTIONS = REPO / 'options' / 'train_SeGSR_HAT_x4.yml'
#: the test-size net (segsr_basicsr/archs/tiny_configs.py): seconds on CPU
TINY = dict(type='SeGSR_HAT', **TINY_HAT, guidance=dict(TINY_GUIDANCE))
NETS = ('segsr', 'hat', 'spandrel')
OTHER = 'other (head, tail, glue)'
CASES = ('forward', 'train')


# ----------------------------------------------------------------------------- building
def network_options(config: str) -> dict:
    """network_g for ``config`` (paper | tiny | option-file path), CLIP weights random."""
    if config == 'tiny':
        opt = copy.deepcopy(TINY)
    else:
        import yaml
        path = PAPER_OPTIONS if config == 'paper' else Path(config)
        opt = copy.deepcopy(yaml.safe_load(path.read_text())['network_g'])
    if opt.get('type') != 'SeGSR_HAT':
        sys.exit(f'--config {config}: network_g.type is {opt.get("type")!r}; this benchmark compares SeGSR_HAT '
                 "with spandrel's HAT")
    if opt.get('guidance'):
        opt['guidance'] = dict(opt['guidance'], clip_pretrained=None)  # random weights: same cost, no download
    return opt


def backbone_options(opt: dict) -> dict:
    return {k: v for k, v in opt.items() if k not in ('type', 'guidance', 'use_checkpoint')}


def build(name: str, opt: dict, device: torch.device, channels_last: bool = False):
    """One benchmarked net, on ``device``."""
    import segsr_basicsr  # noqa: F401  (registers SeGSR_HAT; compat layer before basicsr)
    from basicsr.archs import build_network
    if name == 'spandrel':
        from spandrel.architectures.HAT import HAT as SpandrelHAT  # benchmark/test-only dependency
        net = SpandrelHAT(**backbone_options(opt))
    elif name == 'hat':
        net = build_network(dict(opt, guidance=None, use_checkpoint=False))
    elif name in ('segsr', 'segsr_ckpt', 'segsr_compiled'):
        if not opt.get('guidance'):
            sys.exit('the config has no guidance block: nothing to compare')
        net = build_network(dict(opt, use_checkpoint=name == 'segsr_ckpt'))
    else:
        raise ValueError(name)
    if name.startswith('segsr'):  # LoRA B as after training (it starts at 0): merged != unmerged, same cost
        gen = torch.Generator().manual_seed(1)
        for m in net.modules():
            if hasattr(m, 'lora_B'):
                with torch.no_grad():
                    m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=gen) * 0.01)
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if name == 'segsr_compiled':
        net.forward = torch.compile(net.forward, dynamic=False)
    return net


def make_runner(net, case: str, x: torch.Tensor, target: torch.Tensor):
    """A no-argument callable running one ``case`` of ``net``; for ``forward``, LoRA merged (as infer does)."""
    from segsr_basicsr.inference.engine import forward_padded
    if case == 'forward':
        def run():
            net.eval()
            if callable(getattr(net, 'merge_lora', None)):
                net.merge_lora()  # as segsr-infer --merge-lora; a no-op once merged
            with torch.no_grad():
                return forward_padded(net, x)
        return run
    params = [p for p in net.parameters() if p.requires_grad]
    optim = torch.optim.Adam(params, lr=2e-4, betas=(0.9, 0.99))  # the paper's optimiser

    def run():
        net.train()
        if callable(getattr(net, 'unmerge_lora', None)):
            net.unmerge_lora()  # LoRA is trained unmerged; a no-op when not merged
        optim.zero_grad(set_to_none=True)
        loss = F.l1_loss(net(x), target)
        loss.backward()
        optim.step()
        return loss
    return run


def inputs(batch: int, size: int, scale: int, device: torch.device, channels_last: bool = False):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=g).to(device)
    target = torch.rand(batch, 3, size * scale, size * scale, generator=g).to(device)
    if channels_last:
        x, target = x.contiguous(memory_format=torch.channels_last), target.contiguous(memory_format=torch.channels_last)
    return x, target


# ----------------------------------------------------------------------------- measuring
def matmul_runner(device, dtype, n):
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return lambda: torch.mm(a, b), 2 * n ** 3


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    from torch.utils.flop_counter import sdpa_flop_count
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    from torch.utils.flop_counter import sdpa_backward_flop_count
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def count_flops(fn) -> int:
    """FLOPs of one call, torch.utils.flop_counter + the CPU flash-SDPA kernels it does not know."""
    from torch.utils.flop_counter import FlopCounterMode
    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, '_scaled_dot_product_flash_attention_for_cpu'):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _sdpa_cpu_backward_flops
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()


def rss_mb(field: str = 'VmRSS') -> float:
    """This process's RSS (VmRSS) or its peak (VmHWM), MB, from /proc.

    VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork + exec, so a child would
    report its parent's RSS when that is larger.
    """
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024
    return float('nan')


def child_memory(args) -> None:
    """In a fresh process: peak memory of one (net, case), two calls (Adam state exists in the second step)."""
    device = torch.device(args.device)
    opt = network_options(args.config)
    torch.manual_seed(0)
    net = build(args.child_net, opt, device, args.channels_last)
    x, target = inputs(args.batch, args.child_size, opt['upscale'], device, args.channels_last)
    run = make_runner(net, args.child_case, x, target)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    else:
        base = rss_mb()
    for _ in range(2):
        run()
    sync(device)
    if device.type == 'cuda':
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = rss_mb('VmHWM')
    print(json.dumps(dict(base_mb=base, peak_mb=peak)))


def _scene_child_setup(args):
    """(device, network options, eval net with LoRA merged as segsr-infer has it, an LR scene of blocky noise)."""
    import numpy as np
    device = torch.device(args.device)
    opt = network_options(args.config)
    torch.manual_seed(0)
    net = build(args.child_net, opt, device).eval()
    if callable(getattr(net, 'merge_lora', None)):
        net.merge_lora()
    n = args.child_size
    rng = np.random.default_rng(0)  # blocky noise: content does not change the cost
    scene = np.repeat(np.repeat(rng.integers(0, 256, (n // 8, n // 8, 3), dtype=np.uint8), 8, 0), 8, 1)
    return device, opt, net, scene


def child_scene(args) -> None:
    """In a fresh process: one scene through the API (SeGSRUpscaler.upscale, tiled), time and peak memory."""
    from segsr_basicsr.api import SeGSRUpscaler
    device, opt, net, scene = _scene_child_setup(args)
    n, s = args.child_size, opt['upscale']
    base = rss_mb()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    t0, c0 = time.perf_counter(), time.process_time()
    model = SeGSRUpscaler(net, device)
    sr = model.upscale(scene, tile=args.tile, overlap=args.tile_overlap)
    sync(device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert sr.shape == (n * s, n * s, 3)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == 'cuda' \
        else rss_mb('VmHWM')
    from segsr_basicsr.inference.engine import TileSpec
    tiles = len(model.engine.windows(n, n, TileSpec(args.tile, args.tile_overlap)))
    print(json.dumps(dict(base_mb=base, peak_mb=peak, wall=wall, cpu=cpu, tiles=tiles)))


class _BudgetSpent(Exception):
    pass


def child_throughput(args) -> None:
    """In a fresh process: tiles/s of SeG-SR over an LR scene, tiled and batched, under torch.inference_mode.

    The tiles go through ``inference.tiling.tiled_forward`` (blending included; finished blocks are dropped)
    with LoRA merged, as ``segsr-infer`` runs them. Stops after ``--tp-seconds``; the first batch is a
    warm-up and is left out of the steady rate.
    """

    from segsr_basicsr.inference.engine import Engine, TileSpec
    from segsr_basicsr.inference.tiling import tiled_forward
    device, opt, net, scene = _scene_child_setup(args)
    n, engine = args.child_size, Engine(net, device)
    multiple = engine.multiple
    lq = torch.from_numpy(scene).permute(2, 0, 1).unsqueeze(0)
    total = len(engine.windows(n, n, TileSpec(args.tp_tile, args.tp_overlap)))
    stamps = [(time.perf_counter(), time.process_time(), 0)]

    def progress(k):
        stamps.append((time.perf_counter(), time.process_time(), stamps[-1][2] + k))
        if stamps[-1][0] - stamps[0][0] > args.tp_seconds and stamps[-1][2] < total:
            raise _BudgetSpent

    with torch.inference_mode():
        try:
            tiled_forward(lambda t: engine.forward(t.float().div_(255))[0], lq, args.tp_tile, args.tp_overlap,
                          multiple=multiple, batch=args.child_batch, device=device, out_device=torch.device('cpu'),
                          sink=lambda *block: None, progress=progress)
        except _BudgetSpent:
            pass
    sync(device)
    (w0, c0, _), (w1, c1, k1), (wn, cn, kn) = stamps[0], stamps[1], stamps[-1]
    steady = (kn - k1) / (wn - w1) if kn > k1 else float('nan')
    print(json.dumps(dict(tiles_total=total, tiles_done=kn, wall=wn - w0, cpu=cn - c0, tiles_per_s=kn / (wn - w0),
                          steady_tiles_per_s=steady, steady_cpu_s_per_tile=(cn - c1) / max(kn - k1, 1))))


def in_child(args, mode: str, net: str, case: str, size: int, batch: int = 1) -> dict:
    cmd = [sys.executable, __file__, '--child', mode, '--child-net', net, '--child-case', case, '--child-size',
           str(size), '--config', args.config, '--batch', str(args.batch), '--device', args.device, '--tile',
           str(args.tile), '--tile-overlap', str(args.tile_overlap), '--tp-tile', str(args.tp_tile),
           '--tp-overlap', str(args.tp_overlap), '--tp-seconds', str(args.tp_seconds), '--child-batch', str(batch)]
    if args.threads:
        cmd += ['--threads', str(args.threads)]
    if args.channels_last:
        cmd.append('--channels-last')
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        return dict(error=out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f'exit {out.returncode}')
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the run
def fmt_mem(m: dict, device) -> str:
    if m.get('error') == 'skipped':
        return '-'
    if 'error' in m:
        return f'failed: {m["error"][:40]}'
    if device.type == 'cuda':
        return f'{m["peak_mb"]:8.0f} MB'
    return f'{m["peak_mb"]:8.0f} MB (+{m["peak_mb"] - m["base_mb"]:6.0f})'


def measure(args, nets: dict, cases, size: int, device, title: str, memory: dict) -> dict:
    """Time and FLOPs of every net x case at LR ``size``, with ``memory`` from the children; prints a table.

    Rounds (each net once, then the matmul) repeat until every net's per-round ratio to spandrel's HAT
    has a spread (IQR / median) under ``--target-spread``, or the round / time budget ends.
    """
    opt_scale = next(iter(nets.values()))[1]
    x, target = inputs(args.batch, size, opt_scale, device, args.channels_last)
    mm, mm_flops = matmul_runner(device, x.dtype, args.matmul_size)
    results = {}
    print(f'\n== {title}: LR {size}x{size}, batch {args.batch}')
    mem_col = 'peak alloc' if device.type == 'cuda' else 'peak RSS (+growth)'
    print(f'{"case":8s} {"net":12s} {"wall ms":>9s} {"cpu ms":>9s} {"wall/spd (spread)":>18s} '
          f'{"cpu/spd (spread)":>17s} {"GFLOP":>7s} {"GFLOP/s":>8s} {"util":>6s}  {mem_col}')
    for case in cases:
        runners = {name: make_runner(net, case, x, target) for name, (net, _) in nets.items()}
        ref = 'spandrel' if 'spandrel' in runners else next(iter(runners))
        run = interleaved_until_steady({**runners, 'matmul': mm}, device, ref, watch=set(runners),
                                       warmup=args.warmup, min_repeats=args.repeats, max_repeats=args.max_repeats,
                                       max_seconds=args.max_seconds, target_spread=args.target_spread,
                                       report=lambda i, ratios, load: print(
                                           f'  {case} round {i}: ' + ', '.join(
                                               f'{n} {k} {r:.3f}' for (n, k), r in ratios.items()) +
                                           f' (load {load:.1f})', flush=True))
        med = {name: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts))
               for name, ts in run['times'].items()}
        mm_rate = mm_flops / med.pop('matmul')[0]
        for name, fn in runners.items():
            flops = count_flops(fn) if not args.no_flops else float('nan')
            mem = memory.get((size, case, name), {'error': 'skipped'})
            ratio = {kind: (statistics.median(run['ratios'][(name, kind)]), spread(run['ratios'][(name, kind)]))
                     if name != ref else (1., 0.) for kind in ('wall', 'cpu')}
            results[(case, name)] = dict(wall=med[name][0], cpu=med[name][1], ratio=ratio, flops=flops, mem=mem,
                                         matmul_flops_per_s=mm_rate, ref=ref, rounds=run['rounds'],
                                         steady=run['steady'], loads=run['loads'])
            r = results[(case, name)]
            rate = r['flops'] / r['wall']
            rw, rc = (f'{ratio[k][0]:6.3f} ({ratio[k][1]:5.1%})' for k in ('wall', 'cpu'))
            print(f'{case:8s} {name:12s} {r["wall"] * 1e3:9.1f} {r["cpu"] * 1e3:9.1f} {rw:>18s} {rc:>17s} '
                  f'{r["flops"] / 1e9:7.1f} {rate / 1e9:8.1f} {rate / mm_rate:6.1%}  {fmt_mem(r["mem"], device)}',
                  flush=True)
        loads = run['loads']
        print(f'{case:8s} {"matmul":12s} {args.matmul_size}^3 {x.dtype}: {mm_rate / 1e9:.1f} GFLOP/s (same rounds)')
        state = 'steady' if run['steady'] else f'NOT steady (wanted every spread < {args.target_spread:.0%})'
        print(f'{case:8s} {run["rounds"]} interleaved rounds, {state}; ratios are medians of per-round ratios to '
              f'{ref} (spread = IQR / median); load during: median {statistics.median(loads):.1f}, '
              f'{min(loads):.1f}-{max(loads):.1f}')
    return results


def check_outputs(nets: dict, x: torch.Tensor, target: torch.Tensor) -> None:
    """Our HAT == spandrel's HAT; merged == unmerged LoRA; checkpointed == plain (loss and gradients)."""
    from segsr_basicsr.inference.engine import forward_padded
    with torch.no_grad():
        if 'hat' in nets and 'spandrel' in nets:
            nets['hat'][0].eval(), nets['spandrel'][0].eval()
            print(f'max |hat - spandrel|            = {(nets["hat"][0](x) - nets["spandrel"][0](x)).abs().max():.2e}')
        if 'segsr' in nets:
            net = nets['segsr'][0].eval()
            net.unmerge_lora()
            plain = net(x)
            net.merge_lora()
            merged = forward_padded(net, x)
            net.unmerge_lora()
            print(f'max |segsr merged - unmerged|   = {(merged - plain).abs().max():.2e}')
    if 'segsr' in nets and 'segsr_ckpt' in nets:
        grads = []
        for name in ('segsr', 'segsr_ckpt'):
            net = nets[name][0].train()
            net.zero_grad(set_to_none=True)
            torch.manual_seed(1)  # same dropout / drop-path draws in both
            loss = F.l1_loss(net(x), target)
            loss.backward()
            grads.append((loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}))
            net.zero_grad(set_to_none=True)
        (l0, g0), (l1, g1) = grads
        gdiff = max((g0[n] - g1[n]).abs().max().item() for n in g0)
        print(f'checkpointed vs plain: |loss diff| = {(l0 - l1).abs().item():.2e}, max |grad diff| = {gdiff:.2e} '
              f'({len(g1)}/{len(g0)} grads)')


def profile_breakdown(net, x, target, device, case: str, steps: int) -> None:
    """torch.profiler time per part of SeG-SR (HAT units, CLIP tower, SLM, modulation, head/tail), fwd and bwd.

    Forward ops are labelled by the module they run in; backward ops are matched to them by autograd
    sequence number.
    """
    from torch.profiler import ProfilerActivity, profile, record_function
    g = net.guidance
    parts = {'CLIP tower': [g.encoder], 'SLM (embeddings, maps, upsampler)': [g.meta_net, g.film, g.film_out,
                                                                              g.attention, g.fusion, g.upsampler],
             'modulation (LMM)': list(net.modulations), 'HAT units (RHAGs)': list(net.layers)}
    handles = []
    for label, mods in parts.items():
        for m in mods:
            scope = {}

            def pre(mod, inp, label=label, scope=scope):
                scope['rf'] = record_function(f'part::{label}')
                scope['rf'].__enter__()

            def post(mod, inp, out, scope=scope):
                scope.pop('rf').__exit__(None, None, None)
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    run = make_runner(net, case, x, target)
    run()  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with profile(activities=activities) as prof:
        with record_function('part::step'):
            for _ in range(steps):
                run()
    for h in handles:
        h.remove()
    events = [e for e in prof.events() if e.device_type.name == 'CPU']
    ranges = sorted((e.time_range.start, e.time_range.end, e.name[len('part::'):]) for e in events
                    if e.name.startswith('part::') and e.name != 'part::step')
    step = next(e for e in events if e.name == 'part::step')

    def label_at(t):
        for s, e, name in ranges:
            if s <= t <= e:
                return name
        return OTHER

    fwd_label = {}  # sequence number -> part, from the forward ops
    for e in events:
        if e.sequence_nr >= 0 and not e.name.startswith(('autograd::', 'part::')) and e.sequence_nr not in fwd_label:
            fwd_label[e.sequence_nr] = label_at(e.time_range.start)
    fwd = {}
    bwd = {}
    for s, e, name in ranges:
        fwd[name] = fwd.get(name, 0) + (e - s)
    fwd[OTHER] = sum(e.time_range.elapsed_us() for e in events  # top-level forward ops outside the parts
                     if e.cpu_parent is step and not e.name.startswith(('part::', 'autograd', 'Optimizer'))
                     and label_at(e.time_range.start) == OTHER)
    for e in events:
        if e.name.startswith('autograd::engine::evaluate_function'):
            name = fwd_label.get(e.sequence_nr, OTHER)
            bwd[name] = bwd.get(name, 0) + e.time_range.elapsed_us()
    total = step.time_range.elapsed_us()
    print(f'\n== profile, {case}: {total / 1e3 / steps:.0f} ms per step (wall, under the profiler, {steps} steps)')
    print(f'{"part":36s} {"forward ms":>11s} {"backward ms":>12s} {"share":>7s}')
    accounted = 0
    for name in list(parts) + [OTHER]:
        f_, b_ = fwd.get(name, 0), bwd.get(name, 0)
        accounted += f_ + b_
        print(f'{name:36s} {f_ / 1e3 / steps:11.1f} {b_ / 1e3 / steps:12.1f} {(f_ + b_) / total:7.1%}')
    print(f'{"rest (loss, optimiser, autograd)":36s} {"":11s} {"":12s} {(total - accounted) / total:7.1%}')


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default='paper', help='paper | tiny | path to an option file (network_g)')
    p.add_argument('--lr-size', type=int, default=64)
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--device', default='cpu', help='cpu | cuda | cuda:N')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--repeats', type=int, default=5, help='least interleaved rounds per case')
    p.add_argument('--max-repeats', type=int, default=25, help='most rounds per case')
    p.add_argument('--max-seconds', type=float, default=900, help='time budget of the rounds per case')
    p.add_argument('--target-spread', type=float, default=0.05,
                   help='stop when every per-round ratio to spandrel has IQR / median below this')
    p.add_argument('--nets', nargs='+', choices=NETS, default=list(NETS))
    p.add_argument('--cases', nargs='+', choices=CASES, default=list(CASES))
    p.add_argument('--use-checkpoint', action='store_true', help='also segsr with activation checkpointing')
    p.add_argument('--compile', action='store_true', help='also segsr under torch.compile (needs a C++ compiler)')
    p.add_argument('--channels-last', action='store_true', help='nets and inputs in channels_last')
    p.add_argument('--scaling', action='store_true', help='LR sizes --scaling-sizes, then a tiled --scene')
    p.add_argument('--scaling-sizes', type=int, nargs='+', default=[32, 64, 128])
    p.add_argument('--scene', type=int, default=1024, help='LR scene size for --scaling (0: skip)')
    p.add_argument('--tile', type=int, default=256, help='tile size (LR) of the scene')
    p.add_argument('--tile-overlap', type=int, default=32)
    p.add_argument('--throughput', action='store_true',
                   help='tiles/s of segsr over an LR --tp-scene, tiled, per --tile-batch (inference_mode, fresh process)')
    p.add_argument('--tp-scene', type=int, default=1024, help='LR scene size for --throughput')
    p.add_argument('--tp-tile', type=int, default=64, help='LR tile size for --throughput (the training patch)')
    p.add_argument('--tp-overlap', type=int, default=16)
    p.add_argument('--tile-batch', type=int, nargs='+', default=[1, 4], help='tiles per forward for --throughput')
    p.add_argument('--tp-seconds', type=float, default=120, help='time budget per --tile-batch value')
    p.add_argument('--only-throughput', action='store_true', help='skip the timing tables (with --throughput)')
    p.add_argument('--matmul-size', type=int, default=1024)
    p.add_argument('--no-memory', action='store_true', help='skip the child processes (memory)')
    p.add_argument('--no-flops', action='store_true')
    p.add_argument('--profile', action='store_true', help='torch.profiler breakdown of segsr (forward and train)')
    p.add_argument('--child', choices=['memory', 'scene', 'throughput'], help=argparse.SUPPRESS)
    p.add_argument('--child-batch', type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument('--child-net', help=argparse.SUPPRESS)
    p.add_argument('--child-case', help=argparse.SUPPRESS)
    p.add_argument('--child-size', type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return dict(memory=child_memory, scene=child_scene, throughput=child_throughput)[args.child](args)
    load_before = os.getloadavg()

    device = torch.device(args.device)
    opt = network_options(args.config)
    names = list(args.nets)
    if args.use_checkpoint:
        names.append('segsr_ckpt')
    if args.compile:
        names.append('segsr_compiled')
    sizes = args.scaling_sizes if args.scaling else [args.lr_size]
    # memory first, while this process is small: the children's peaks are then the only big ones
    memory = {} if args.no_memory or args.profile else {
        (size, case, name): in_child(args, 'memory', name, case, size)
        for size in sizes for case in args.cases for name in names}
    scene = in_child(args, 'scene', 'segsr' if 'segsr' in names else names[0], 'forward', args.scene) \
        if args.scaling and args.scene and not args.profile else None
    torch.manual_seed(0)
    nets = {}
    for name in names:
        nets[name] = (build(name, opt, device, args.channels_last), opt['upscale'])
    # one set of weights for all (the backbone of spandrel's HAT, the guidance of segsr)
    ref = nets.get('spandrel', nets.get('hat', nets.get('segsr')))[0].state_dict()
    for name, (net, _) in nets.items():
        net.load_state_dict({k: v for k, v in ref.items() if k in net.state_dict()}, strict=False)
    if 'segsr' in nets:
        g = nets['segsr'][0].state_dict()
        for name in ('segsr_ckpt', 'segsr_compiled'):
            if name in nets:
                nets[name][0].load_state_dict(g)
    params = {n: sum(p.numel() for p in net.parameters()) / 1e6 for n, (net, _) in nets.items()}
    print(f'config {args.config} x{opt["upscale"]}, {device}, {torch.get_num_threads()} threads, torch '
          f'{torch.__version__}, {os.cpu_count()} CPUs, load before {load_before[0]:.1f} {load_before[1]:.1f} '
          f'{load_before[2]:.1f} (1/5/15 min)')
    if device.type == 'cpu' and load_before[0] > 0.5:
        print(f'WARNING: the machine is busy (load {load_before[0]:.1f} before this run): other jobs share these '
              'CPUs; times will be inflated and noisy (ratios of interleaved rounds stay usable)')
    print('params (M): ' + ', '.join(f'{n} {v:.2f}' for n, v in params.items()))
    x, target = inputs(args.batch, args.lr_size, opt['upscale'], device, args.channels_last)
    check_outputs(nets, x, target)

    if args.profile:
        for case in args.cases:
            profile_breakdown(nets['segsr'][0], x, target, device, case, args.repeats)
        return

    results = {}
    if not args.only_throughput:
        for size in sizes:
            results[size] = measure(args, nets, args.cases, size, device, f'{args.config} config', memory)
    if scene is not None:
        name, r = 'segsr' if 'segsr' in names else names[0], scene
        if 'error' in r:
            print(f'\nscene {args.scene}: failed: {r["error"]}')
        else:
            mpix = (args.scene * opt['upscale']) ** 2 / 1e6
            print(f'\n== tiled scene through SeGSRUpscaler.upscale: {name}, LR {args.scene}x{args.scene} '
                  f'-> {args.scene * opt["upscale"]}^2, tile {args.tile} overlap {args.tile_overlap}, {r["tiles"]} '
                  f'tiles')
            print(f'wall {r["wall"]:.1f} s, cpu {r["cpu"]:.1f} s, {r["wall"] / mpix:.1f} s per output Mpixel; '
                  f'{fmt_mem(r, device)}')
    if args.throughput:
        del nets  # the children get the memory
        print(f'\n== scene throughput: segsr, LR {args.tp_scene}x{args.tp_scene} scene, tile {args.tp_tile} overlap '
              f'{args.tp_overlap}, torch.inference_mode, LoRA merged, blending included (fresh process each)')
        for b in args.tile_batch:
            r = in_child(args, 'throughput', 'segsr', 'forward', args.tp_scene, batch=b)
            if 'error' in r:
                print(f'tile batch {b}: failed: {r["error"]}')
                continue
            part = 'whole scene' if r['tiles_done'] == r['tiles_total'] else \
                f'{r["tiles_done"]} of {r["tiles_total"]} tiles ({args.tp_seconds:.0f} s budget)'
            print(f'tile batch {b}: {r["steady_tiles_per_s"]:.3f} tiles/s after the first batch '
                  f'({r["tiles_per_s"]:.3f} with it; {r["steady_cpu_s_per_tile"]:.2f} CPU s per tile), over {part}; '
                  f'whole scene ~{r["tiles_total"] / r["steady_tiles_per_s"] / 60:.1f} min; '
                  f'load {os.getloadavg()[0]:.1f}', flush=True)
    load = os.getloadavg()
    print(f'\nload before: {load_before[0]:.1f} {load_before[1]:.1f} {load_before[2]:.1f} (1/5/15 min); at the end: '
          f'{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; {os.cpu_count()} CPUs, {torch.get_num_threads()} threads')
    for size, res in results.items():
        for case in args.cases:
            for name in ('segsr', 'hat'):
                r = res.get((case, name))
                if r is None or r['ref'] == name:
                    continue
                (w, ws), (c, cs) = r['ratio']['wall'], r['ratio']['cpu']
                print(f'SUMMARY LR {size} {case:7s} {name:5s} / {r["ref"]}: wall {w:.3f} (spread {ws:.1%}), '
                      f'cpu {c:.3f} (spread {cs:.1%}), {r["rounds"]} rounds, '
                      f'{"steady" if r["steady"] else "NOT steady"}, load during {statistics.median(r["loads"]):.1f}')
    busy = load_before[0] > 0.5 or load[0] > torch.get_num_threads() + 0.5
    if device.type == 'cpu' and busy:
        print(f'WARNING: the machine was busy (load {load_before[0]:.1f} before, {load[0]:.1f} at the end, for '
              f'{os.cpu_count()} CPUs and {torch.get_num_threads()} threads here): absolute times are inflated; '
              'the per-round ratios are the figures to quote, with their spread')


if __name__ == '__main__':
    main()
