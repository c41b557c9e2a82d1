"""Parameter counts of the networks the option files build (docs/backbones.md's table, re-measured by CI).

    python benchmarks/param_counts.py options/train_SeGSR_HAT_x4.yml options/train_SeGSR_EDSR_x4.yml ...

Per file: K (the SR units guidance modulates), the backbone alone (network_g without guidance), SeG-SR's
trainable and frozen parameters (the frozen CLIP tower, LoRA excepted) and its total, in millions. CLIP
weights are left random (same shapes, nothing downloaded). Prints a markdown table.
"""
import argparse
from pathlib import Path

import yaml

import segsr_basicsr  # noqa: F401,I001  (compat layer + registration, before basicsr)
from basicsr.archs import build_network


def counts(net_opt):
    """(K, backbone alone, trainable, frozen, total) of ``net_opt``, in parameters."""
    guided = build_network(dict(net_opt, guidance=dict(net_opt['guidance'], clip_pretrained=None)))
    plain = build_network(dict(net_opt, guidance=None))
    trainable = sum(p.numel() for p in guided.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in guided.parameters() if not p.requires_grad)
    return len(guided.sr_units), sum(p.numel() for p in plain.parameters()), trainable, frozen, trainable + frozen


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('options', nargs='+', type=Path, help='option files with a guided network_g')
    args = p.parse_args(argv)
    print('| option file | K | backbone alone | SeG-SR trainable | frozen CLIP | SeG-SR total |')
    print('| --- | ---: | ---: | ---: | ---: | ---: |')
    for path in args.options:
        k, *millions = counts(yaml.safe_load(path.read_text())['network_g'])
        print(f'| `{path.name}` | {k} | ' + ' | '.join(f'{n / 1e6:.2f} M' for n in millions) + ' |', flush=True)


if __name__ == '__main__':
    main()
