"""Our HAT (SeGSR_HAT, no guidance) vs spandrel's HAT: inference and one training step, same weights, same input.

    .venv/bin/python benchmarks/bench_hat.py --config HAT --lr-size 64 --scale 4 --batch 1 --device cpu --threads 2

Runs of the two nets are interleaved (ours, theirs, ours, ...) so background
load hits both alike; medians after warm-up. Ratio = spandrel time / our time
(> 1: ours is faster), from the medians and as the median of the ratios of
back-to-back runs (steadier when other jobs share the machine). Wall-clock and
process CPU time are both reported; with several threads CPU time also counts
OpenMP spin-waiting, so prefer wall time there.
"""
import argparse
import statistics

import torch

import segsr_basicsr  # noqa: F401
from timing import interleaved_times  # benchmarks/timing.py
from segsr_basicsr.archs.hat_arch import HAT_COMMON, HAT_SIZES, SeGSR_HAT


def compare(label, fns, device, warmup, repeats):
    """Interleaved medians (seconds) of each fn in ``fns`` (dict name -> callable)."""
    times = interleaved_times(fns, device, warmup, repeats)
    for kind, i in (('wall', 0), ('cpu', 1)):
        med = {name: statistics.median(t[i] for t in ts) for name, ts in times.items()}
        paired = statistics.median(s[i] / o[i] for s, o in zip(times['spandrel'], times['ours']))
        print(f'{label:10s} {kind:4s} ours {med["ours"] * 1e3:9.1f} ms   spandrel {med["spandrel"] * 1e3:9.1f} ms   '
              f'spandrel/ours {med["spandrel"] / med["ours"]:5.2f}x (median of paired runs {paired:5.2f}x)')


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', choices=list(HAT_SIZES), default='HAT')
    parser.add_argument('--lr-size', type=int, default=64)
    parser.add_argument('--scale', type=int, default=4)
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--use-checkpoint', action='store_true', help='our net with activation checkpointing')
    parser.add_argument('--skip', choices=['forward', 'train'], default=None)
    args = parser.parse_args()
    from spandrel.architectures.HAT import HAT as SpandrelHAT  # benchmark/test-only dependency

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = dict(HAT_COMMON, **HAT_SIZES[args.config], upscale=args.scale)
    theirs = SpandrelHAT(**cfg).to(device)
    ours = SeGSR_HAT(**cfg, use_checkpoint=args.use_checkpoint).to(device)
    ours.load_state_dict(theirs.state_dict())
    nets = {'ours': ours, 'spandrel': theirs}
    x = torch.rand(args.batch, 3, args.lr_size, args.lr_size, device=device)
    target = torch.rand(args.batch, 3, args.lr_size * args.scale, args.lr_size * args.scale, device=device)
    print(f'{args.config} x{args.scale}, LR {args.lr_size}x{args.lr_size}, batch {args.batch}, {device}, '
          f'{torch.get_num_threads()} threads, torch {torch.__version__}, '
          f'{sum(p.numel() for p in ours.parameters()) / 1e6:.2f} M params')

    with torch.no_grad():
        for net in nets.values():
            net.eval()
        diff = (ours(x) - theirs(x)).abs().max().item()
    print(f'max |ours - spandrel| = {diff:.2e}')

    if args.skip != 'forward':
        def infer(net):
            def run():
                with torch.no_grad():
                    net(x)
            return run
        compare('forward', {name: infer(net) for name, net in nets.items()}, device, args.warmup, args.repeats)

    if args.skip != 'train':
        def train_step(net):
            net.train()
            optim = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.9, 0.99))

            def run():
                optim.zero_grad(set_to_none=True)
                torch.nn.functional.l1_loss(net(x), target).backward()
                optim.step()
            return run
        compare('train step', {name: train_step(net) for name, net in nets.items()}, device, args.warmup,
                args.repeats)


if __name__ == '__main__':
    main()
