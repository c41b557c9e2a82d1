"""Test with BasicSR's own pipeline: ``python -m segsr_basicsr.test -opt X.yml``; results go to ./results.

Before any work the option file, every test image (pairing, sizes, the metrics' crop) and the results
folder are checked (:mod:`segsr_basicsr.utils.preflight`). When stderr is not a terminal (a cluster
log), a progress line ``test <set>: done/total images (rate)`` is printed every few seconds.
"""
import sys

import segsr_basicsr  # noqa: F401  (compat layer + registration)


class ProgressLoader:
    """A test DataLoader (batch 1) that reports progress while the model iterates it."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def __len__(self):
        return len(self._loader)

    def __iter__(self):
        from segsr_basicsr.utils.progress import progress
        name = self._loader.dataset.opt.get('name', 'set')
        return progress(self._loader, f'test {name}', unit='images', total=len(self._loader))


def _with_progress(pipeline):
    """``pipeline`` with BasicSR's test loaders wrapped in :class:`ProgressLoader` (log files only)."""
    import basicsr.test as bt

    def run(root_path):
        if sys.stderr.isatty():  # BasicSR's own tqdm bar (val.pbar) serves a terminal
            return pipeline(root_path)
        build = bt.build_dataloader
        bt.build_dataloader = lambda *a, **k: ProgressLoader(build(*a, **k))
        try:
            return pipeline(root_path)
        finally:
            bt.build_dataloader = build

    return run


def main(argv=None):
    from basicsr.test import test_pipeline

    from segsr_basicsr.training.pipeline import run
    run(_with_progress(test_pipeline), is_train=False, argv=argv, prog='segsr-test')


if __name__ == '__main__':
    main()
