"""Make basicsr 1.4.2 work on today's torch / torchvision / Python, changing BasicSR only where asked.

Two layers, applied at two moments:

* :func:`apply` runs when ``segsr_basicsr`` is imported (also in every torchrun rank and in spawned
  DataLoader workers). It only installs what importing basicsr needs and changes no BasicSR behaviour:
  a ``torchvision.transforms.functional_tensor`` stand-in (removed in torchvision 0.17) and
  ``distutils`` (gone in Python 3.12: setuptools' copy, else a LooseVersion-only stand-in).
* :func:`patch_train_loop` is applied by our entry points (``segsr_basicsr.train`` / ``.test``) when they
  run, never by the import. It wraps the few module-level functions of BasicSR's train loop that a model
  class cannot override: option parsing (YAML *safe* loader, ``--force_yml`` without ``exec``,
  ``--local-rank``), process-group init (gloo on CPU, nccl on CUDA, long timeout), the resume-state
  lookup (CPU-safe, ``--auto_resume`` skips incomplete states) and the data loaders (own seed generators,
  mid-epoch sampler resume).

Behaviour that belongs to a model (atomic saves, safe loading, RNG states, CPU DDP, validation barrier)
lives in :class:`segsr_basicsr.models.segsr_model.SeGSRModel` as ordinary overrides, so importing this
package next to HAT or Real-ESRGAN leaves their models exactly as BasicSR wrote them.
Each patch keeps BasicSR's function as ``__segsr_original__`` (see :func:`original`) and calls it where
BasicSR's code can be reused.
"""
import os
import sys
import types

from segsr_basicsr.utils.dist import DIST_TIMEOUT_ENV, dist_ready, dist_timeout  # noqa: F401

_applied = False
_train_loop_patched = False
_MARK = '__segsr_compat__'


# ----------------------------------------------------------------------------- before basicsr
def _install_functional_tensor():
    """basicsr imports torchvision.transforms.functional_tensor, removed in torchvision 0.17."""
    name = 'torchvision.transforms.functional_tensor'
    if name in sys.modules:
        return
    try:
        import torchvision.transforms.functional_tensor  # noqa: F401
        return
    except ImportError:
        pass
    from torchvision.transforms import functional as F
    module = types.ModuleType(name)
    module.rgb_to_grayscale = F.rgb_to_grayscale
    sys.modules[name] = module


def _ensure_distutils():
    """basicsr.archs.arch_util does ``from distutils.version import LooseVersion`` (Python 3.12 dropped it)."""
    try:
        from distutils.version import LooseVersion  # noqa: F401
        return
    except ImportError:
        pass
    try:  # setuptools ships distutils and installs it as a top-level alias on import
        import setuptools  # noqa: F401
        from distutils.version import LooseVersion  # noqa: F401,F811
        return
    except ImportError:
        pass
    import re

    class LooseVersion:
        """Minimal stand-in: basicsr only compares torchvision versions with it."""

        def __init__(self, vstring):
            self.vstring = str(vstring)
            self.version = [int(p) if p.isdigit() else p for p in re.findall(r'\d+|[a-z]+', self.vstring.lower())]

        def _cmp(self, other):
            other = other if isinstance(other, LooseVersion) else LooseVersion(other)
            try:
                return (self.version > other.version) - (self.version < other.version)
            except TypeError:  # int vs str component: compare as strings like distutils did
                a, b = [str(v) for v in self.version], [str(v) for v in other.version]
                return (a > b) - (a < b)

        def __eq__(self, other):
            return self._cmp(other) == 0

        def __lt__(self, other):
            return self._cmp(other) < 0

        def __le__(self, other):
            return self._cmp(other) <= 0

        def __gt__(self, other):
            return self._cmp(other) > 0

        def __ge__(self, other):
            return self._cmp(other) >= 0

    pkg = types.ModuleType('distutils')
    version = types.ModuleType('distutils.version')
    version.LooseVersion = LooseVersion
    pkg.version = version
    sys.modules.setdefault('distutils', pkg)
    sys.modules['distutils.version'] = version


# ----------------------------------------------------------------------------- helpers
def _patch(owner, name, make):
    """Replace ``owner.name`` by ``make(original)`` once; re-applying (reload) keeps the first original."""
    current = getattr(owner, name)
    original = getattr(current, '__segsr_original__', current)
    new = make(original)
    setattr(new, _MARK, True)
    new.__segsr_original__ = original
    setattr(owner, name, new)
    return new


def original(func):
    """The basicsr function under a compat patch (for tests and for code that wants the raw behaviour)."""
    return getattr(func, '__segsr_original__', func)


def _logger():
    from basicsr.utils import get_root_logger
    return get_root_logger()


# ----------------------------------------------------------------------------- options
_pending_overrides = None


def _patch_options():
    import basicsr.test
    import basicsr.train
    import basicsr.utils.options as options
    from segsr_basicsr.io import option_file as safe
    from segsr_basicsr.io.option_file import SafeOrderedLoader

    def make_ordered_yaml(orig):

        def ordered_yaml():
            """basicsr's (Loader, Dumper), with a YAML *safe* loader that also applies pending --force_yml
            and the option aliases (:func:`segsr_basicsr.io.option_file.apply_aliases`)."""
            _, dumper = orig()
            overrides = list(_pending_overrides or [])

            class OverridingLoader(SafeOrderedLoader):

                def __init__(self, stream):
                    self.source = getattr(stream, 'name', 'the option file')
                    super().__init__(stream)

                def get_single_data(self):
                    opt = safe.apply_overrides(super().get_single_data(), overrides, source=self.source)
                    return safe.apply_aliases(opt, self.source)

            return OverridingLoader, dumper

        return ordered_yaml

    _patch(options, 'ordered_yaml', make_ordered_yaml)

    def make_parse_options(orig):

        def parse_options(root_path, is_train=True):
            """basicsr's parse_options; --force_yml goes through the safe loader instead of exec."""
            global _pending_overrides
            argv, overrides = split_argv(sys.argv)
            saved = sys.argv
            sys.argv, _pending_overrides = argv, overrides
            try:
                opt, args = orig(root_path, is_train)
            finally:
                sys.argv, _pending_overrides = saved, None
            args.force_yml = overrides or None
            return opt, args

        return parse_options

    new = _patch(options, 'parse_options', make_parse_options)
    basicsr.train.parse_options = new
    basicsr.test.parse_options = new


def split_argv(argv):
    """Pull ``--force_yml`` values out of argv; turn torch.distributed.launch's ``--local-rank`` into basicsr's."""
    out, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith('--local-rank'):
            arg = arg.replace('--local-rank', '--local_rank', 1)
        if arg == '--force_yml':
            i += 1
            while i < len(argv) and not argv[i].startswith('-'):
                overrides.append(argv[i])
                i += 1
            continue
        if arg.startswith('--force_yml='):
            overrides.append(arg.split('=', 1)[1])
        else:
            out.append(arg)
        i += 1
    return out, overrides


# ----------------------------------------------------------------------------- distributed
def _patch_dist():
    import basicsr.utils.dist_util as dist_util

    def make_init(orig):

        def _init_dist_pytorch(backend, **kwargs):
            """nccl on CUDA (basicsr's own code), gloo on a CPU-only machine; long timeout either way."""
            import torch
            import torch.distributed as dist
            kwargs.setdefault('timeout', dist_timeout())
            if torch.cuda.is_available() and backend == 'nccl':
                return orig(backend, **kwargs)
            dist.init_process_group(backend='gloo', **kwargs)

        return _init_dist_pytorch

    def make_slurm(orig):

        def _init_dist_slurm(backend, port=None):
            """basicsr's SLURM setup with the long timeout (it passed none); gloo and no set_device without CUDA."""
            import subprocess

            import torch
            import torch.distributed as dist
            proc_id, ntasks = int(os.environ['SLURM_PROCID']), int(os.environ['SLURM_NTASKS'])
            num_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if num_gpus:
                torch.cuda.set_device(proc_id % num_gpus)
            else:
                backend = 'gloo'
            addr = subprocess.getoutput(f"scontrol show hostname {os.environ['SLURM_NODELIST']} | head -n1")
            if port is not None:
                os.environ['MASTER_PORT'] = str(port)
            os.environ.setdefault('MASTER_PORT', '29500')
            local = proc_id % num_gpus if num_gpus else int(os.environ.get('SLURM_LOCALID', 0))
            os.environ.update(MASTER_ADDR=addr, WORLD_SIZE=str(ntasks), LOCAL_RANK=str(local), RANK=str(proc_id))
            dist.init_process_group(backend=backend, timeout=dist_timeout())

        return _init_dist_slurm

    _patch(dist_util, '_init_dist_pytorch', make_init)
    _patch(dist_util, '_init_dist_slurm', make_slurm)


# ----------------------------------------------------------------------------- resume
def _patch_train():
    import torch

    import basicsr.train as train
    from basicsr.data.data_sampler import EnlargedSampler
    from basicsr.utils import scandir
    from basicsr.utils.misc import check_resume
    from segsr_basicsr.errors import CheckpointError
    from segsr_basicsr.io.checkpoint import load_checkpoint

    class ResumableEnlargedSampler(EnlargedSampler):
        """EnlargedSampler that can skip the batches of the resumed epoch that were already trained on."""

        _resume_epoch = None
        _resume_skip = 0

        def resume_at(self, epoch, skip):
            self._resume_epoch, self._resume_skip = epoch, skip

        def set_epoch(self, epoch):
            super().set_epoch(epoch)
            if epoch != self._resume_epoch:
                self._resume_epoch = None

        def __iter__(self):
            indices = list(super().__iter__())
            if self.epoch == self._resume_epoch:
                indices = indices[self._resume_skip:]
            return iter(indices)

    def make_load_resume_state(orig):

        def load_resume_state(opt):
            """basicsr's resume lookup, on CPU or CUDA; ``--auto_resume`` skips unreadable/incomplete states."""
            if torch.cuda.is_available() and opt.get('num_gpu', 0) != 0:
                device = torch.device('cuda', torch.cuda.current_device())
            else:
                device = torch.device('cpu')
            explicit = opt['path'].get('resume_state')
            state = None
            if opt['auto_resume']:
                state_dir = opt['path']['training_states']
                candidates = []
                if os.path.isdir(state_dir):
                    for name in scandir(state_dir, suffix='.state', recursive=False, full_path=False):
                        try:
                            candidates.append((int(name[:-len('.state')]), name))
                        except ValueError:
                            continue
                for it, name in sorted(candidates, reverse=True):
                    path = os.path.join(state_dir, name)
                    problem = _missing_networks(opt, it)
                    if problem:
                        _print(f'Skip {path}: {problem}')
                        continue
                    try:
                        state = load_checkpoint(path, map_location=device)
                    except CheckpointError as e:
                        _print(f'Skip {path}: {e}')
                        continue
                    opt['path']['resume_state'] = path
                    break
                if state is None and candidates:
                    _print(f'No usable training state in {state_dir}: starting from scratch.')
                elif state is None:
                    _print(f'--auto_resume: no training state under {state_dir} yet, starting from scratch.')
            elif explicit:
                if not os.path.isfile(explicit):
                    raise CheckpointError(f'path:resume_state = {explicit} does not exist. Point it to an '
                                          'experiments/<name>/training_states/<iter>.state file, or remove it and '
                                          'use --auto_resume.')
                state = load_checkpoint(explicit, map_location=device)
            if dist_ready():  # every process must continue from the same state, or DDP hangs later
                import torch.distributed as dist
                chosen = [None] * dist.get_world_size()
                dist.all_gather_object(chosen, None if state is None else state.get('iter'))
                if len(set(chosen)) > 1:
                    raise CheckpointError(f'The processes would resume from different iterations {chosen} (rank order, '
                                          'None = from scratch). Is experiments/ on a shared file system, in sync?')
            if state is None:
                return None
            for key in ('iter', 'epoch', 'optimizers', 'schedulers'):
                if key not in state:
                    raise CheckpointError(f'{opt["path"]["resume_state"]} is not a basicsr training state (no '
                                          f'{key!r}). path:resume_state takes experiments/<name>/training_states/'
                                          '<iter>.state; network weights go to path:pretrain_network_g.')
            check_resume(opt, state['iter'])
            missing = _missing_networks(opt, state['iter'])
            if missing:
                raise CheckpointError(f'Cannot resume from {opt["path"]["resume_state"]}: {missing}')
            opt['resume_from'] = {'iter': state['iter'], 'epoch': state['epoch']}
            return state

        return load_resume_state

    def make_create_loaders(orig):

        def create_train_val_dataloader(opt, logger):
            """basicsr's loaders; on resume the sampler continues mid-epoch, and loaders draw their worker base
            seed from their own generator, so data loading and validation never shift the global torch RNG."""
            result = orig(opt, logger)
            train_loader, sampler, val_loaders = result[0], result[1], result[2]
            seed = int(opt['manual_seed']) + opt.get('rank', 0)
            for loader in [train_loader, *val_loaders]:  # each new epoch / validation pass draws a seed from it
                loader.generator = torch.Generator().manual_seed(seed)
            resume = opt.get('resume_from')
            if resume and isinstance(sampler, ResumableEnlargedSampler):
                per_epoch = len(sampler) // train_loader.batch_size
                done = resume['iter'] - resume['epoch'] * per_epoch
                if 0 <= done <= per_epoch:
                    sampler.resume_at(resume['epoch'], done * train_loader.batch_size)
                    logger.info(f'Resume: skipping the {done} batches of epoch {resume["epoch"]} already trained.')
                else:
                    logger.warning(f'Resume: iter {resume["iter"]} is not in epoch {resume["epoch"]} of '
                                   f'{per_epoch} iterations (dataset or batch size changed?): the epoch restarts.')
            return result

        return create_train_val_dataloader

    def _missing_networks(opt, it):
        ignore = opt['path'].get('ignore_resume_networks') or []
        for key in opt:
            if key.startswith('network_') and key not in ignore:
                name = key.replace('network_', '')
                path = os.path.join(opt['path']['models'], f'net_{name}_{it}.pth')
                if not os.path.isfile(path):
                    return f'its network file {path} is missing.'
        return None

    train.EnlargedSampler = ResumableEnlargedSampler
    _patch(train, 'load_resume_state', make_load_resume_state)
    _patch(train, 'create_train_val_dataloader', make_create_loaders)


def _print(msg):
    from basicsr.utils.dist_util import get_dist_info
    if get_dist_info()[0] == 0:
        print(msg, flush=True)


def apply():
    """Import-time part: what basicsr needs to import on today's stack; no BasicSR behaviour changes."""
    global _applied
    if _applied:
        return
    _install_functional_tensor()
    _ensure_distutils()
    import basicsr  # noqa: F401  (now importable)
    _applied = True


def patch_train_loop():
    """Entry-point part (idempotent): wrap BasicSR's train-loop functions; see the module docstring."""
    global _train_loop_patched
    apply()
    if _train_loop_patched:
        return
    _patch_options()
    _patch_dist()
    _patch_train()
    _train_loop_patched = True
