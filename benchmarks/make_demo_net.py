"""A randomly initialised checkpoint of the demo network (options/demo/train_SeGSR_HAT_demo_x4.yml's network_g),
for the seam table and the --quality timing in docs/inference.md when no trained demo checkpoint exists.

    python benchmarks/make_demo_net.py --out /tmp/demo_net.pth
"""
import argparse

import torch
import yaml

import segsr_basicsr  # noqa: F401,I001
from basicsr.archs import build_network
from segsr_basicsr.io.checkpoint import network_metadata

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', required=True)
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args()
    with open('options/demo/train_SeGSR_HAT_demo_x4.yml') as f:
        net_opt = yaml.safe_load(f)['network_g']
    torch.manual_seed(args.seed)
    torch.save({'params': build_network(dict(net_opt)).state_dict(),
                **network_metadata({'network_g': net_opt, 'scale': 4})}, args.out)
    print(f'wrote {args.out} (random init, seed {args.seed})')
