"""Make basicsr 1.4.2 work on today's torch / torchvision / numpy / Python, on CPU and CUDA, safely.

:func:`apply` runs when ``segsr_basicsr`` is imported (also in every torchrun rank and in spawned
DataLoader workers, which re-import the ``__main__`` module). Every patch is idempotent and leaves
basicsr's behaviour untouched where basicsr already works (e.g. CUDA DDP keeps nccl + device_ids).

Before basicsr is imported:
  * ``torchvision.transforms.functional_tensor`` stand-in (removed in torchvision 0.17);
  * ``distutils`` (gone in Python 3.12): setuptools' copy, else a LooseVersion-only stand-in.
After:
  * registries: re-importing a module re-registers the same class; a real name clash names both owners;
  * option files: YAML safe loader, ``--force_yml`` without exec, ``--local-rank`` accepted;
  * ``--launcher pytorch`` / ``slurm``: gloo on CPU, nccl on CUDA, long process-group timeout
    (``SEGSR_DIST_TIMEOUT`` seconds, default 3 h, so a long rank-0 validation does not time out);
  * DDP on CPU (no ``device_ids``); a barrier after rank-0 validation;
  * crash-safe checkpoints: atomic writes, RNG states in training states, ``weights_only`` loading;
  * ``--auto_resume`` on CPU, picks the newest complete state, continues mid-epoch where it stopped;
    data loaders draw their seeds from their own generators (validation no longer shifts the torch RNG).

Patched basicsr objects (each keeps the original as ``__segsr_original__``, see :func:`original`):
``Registry._do_register``, ``utils.options.ordered_yaml`` / ``parse_options`` (also the names imported by
``basicsr.train`` / ``basicsr.test``), ``utils.dist_util._init_dist_pytorch`` / ``_init_dist_slurm``,
``BaseModel.model_to_device`` /
``save_network`` / ``save_training_state`` / ``resume_training`` / ``load_network`` / ``validation``,
``basicsr.train.load_resume_state`` / ``create_train_val_dataloader`` / ``EnlargedSampler``.
"""
import datetime
import os
import sys
import types

_applied = False
_MARK = '__segsr_compat__'

#: process-group timeout (seconds) for --launcher pytorch
DIST_TIMEOUT_ENV = 'SEGSR_DIST_TIMEOUT'
DEFAULT_DIST_TIMEOUT = 3 * 3600


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


def _dist_ready():
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized()


def dist_timeout():
    """Process-group timeout: ``SEGSR_DIST_TIMEOUT`` seconds (default 3 h)."""
    raw = os.environ.get(DIST_TIMEOUT_ENV, '')
    try:
        seconds = float(raw) if raw else DEFAULT_DIST_TIMEOUT
    except ValueError:
        raise ValueError(f'{DIST_TIMEOUT_ENV}={raw!r} is not a number of seconds, e.g. {DIST_TIMEOUT_ENV}=10800.')
    if seconds <= 0:
        raise ValueError(f'{DIST_TIMEOUT_ENV}={raw!r} must be > 0 seconds.')
    return datetime.timedelta(seconds=seconds)


# ----------------------------------------------------------------------------- registries
def _patch_registry():
    from basicsr.utils.registry import Registry

    def make_do_register(orig):

        def _do_register(self, name, obj, suffix=None):
            """Re-importing a module (importlib.reload, a fresh import in the same process) re-registers the same
            definition: replace it. A different object under a taken name is still refused, naming both."""
            key = f'{name}_{suffix}' if isinstance(suffix, str) else name
            old = self._obj_map.get(key)
            if old is not None and old is not obj:
                same = (getattr(old, '__module__', None), getattr(old, '__qualname__', None)) == \
                    (getattr(obj, '__module__', None), getattr(obj, '__qualname__', None))
                if same:
                    self._obj_map[key] = obj
                    return
                raise KeyError(f"An object named '{key}' is already registered in basicsr's '{self._name}' registry "
                               f'by {getattr(old, "__module__", "?")}; {getattr(obj, "__module__", "?")} cannot '
                               'register another one under the same name. Rename one of them.')
            return orig(self, name, obj, suffix)

        return _do_register

    _patch(Registry, '_do_register', make_do_register)


# ----------------------------------------------------------------------------- options
_pending_overrides = None


def _patch_options():
    import basicsr.test
    import basicsr.train
    import basicsr.utils.options as options
    from segsr_basicsr.utils import options as safe

    def make_ordered_yaml(orig):

        def ordered_yaml():
            """basicsr's (Loader, Dumper), with a YAML *safe* loader that also applies pending --force_yml."""
            _, dumper = orig()
            if not _pending_overrides:
                return safe.SafeOrderedLoader, dumper
            overrides = list(_pending_overrides)

            class OverridingLoader(safe.SafeOrderedLoader):

                def __init__(self, stream):
                    self.source = getattr(stream, 'name', 'the option file')
                    super().__init__(stream)

                def get_single_data(self):
                    return safe.apply_overrides(super().get_single_data(), overrides, source=self.source)

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


# ----------------------------------------------------------------------------- models
def _patch_base_model():
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from basicsr.models.base_model import BaseModel
    from basicsr.utils.dist_util import get_dist_info
    from segsr_basicsr.utils.checkpoint import CheckpointError, get_rng_states, load_checkpoint

    def make_model_to_device(orig):

        def model_to_device(self, net):
            """DDP on CPU must not get device_ids (basicsr passes torch.cuda.current_device())."""
            if self.opt['dist'] and self.device.type != 'cuda':
                return DistributedDataParallel(
                    net.to(self.device), find_unused_parameters=self.opt.get('find_unused_parameters', False))
            return orig(self, net)

        return model_to_device

    def make_save_network(orig):

        def save_network(self, net, net_label, current_iter, param_key='params'):
            """Rank 0 writes ``{label}_{iter}.pth`` atomically (basicsr's save could leave a truncated file)."""
            if get_dist_info()[0] != 0:
                return
            label = 'latest' if current_iter == -1 else current_iter
            save_path = os.path.join(self.opt['path']['models'], f'{net_label}_{label}.pth')
            nets = net if isinstance(net, list) else [net]
            keys = param_key if isinstance(param_key, list) else [param_key]
            if len(nets) != len(keys):
                raise ValueError(f'save_network: {len(nets)} networks but {len(keys)} param keys.')
            save_dict = {}
            for net_, key_ in zip(nets, keys):
                state_dict = self.get_bare_model(net_).state_dict()
                save_dict[key_] = {(k[7:] if k.startswith('module.') else k): v.cpu() for k, v in state_dict.items()}
            _save_with_retry(save_dict, save_path)

        return save_network

    def make_save_training_state(orig):

        def save_training_state(self, epoch, current_iter):
            """Atomic ``{iter}.state`` with every rank's RNG states, so a resumed run continues the same sequence.

            Called on every rank (gathers the RNG states); only rank 0 writes.
            """
            if current_iter == -1:
                return
            rng = get_rng_states()
            if _dist_ready():
                import torch.distributed as dist
                rngs = [None] * dist.get_world_size()
                dist.all_gather_object(rngs, rng)
            else:
                rngs = [rng]
            if get_dist_info()[0] != 0:
                return
            state = {
                'epoch': epoch,
                'iter': current_iter,
                'optimizers': [o.state_dict() for o in self.optimizers],
                'schedulers': [s.state_dict() for s in self.schedulers],
                'rng_states': rngs,
            }
            _save_with_retry(state, os.path.join(self.opt['path']['training_states'], f'{current_iter}.state'))

        return save_training_state

    def make_resume_training(orig):

        def resume_training(self, resume_state):
            """basicsr's optimizer/scheduler reload, plus this rank's RNG states."""
            orig(self, resume_state)
            rngs = resume_state.get('rng_states')
            rank, world = get_dist_info()
            if rngs and len(rngs) == world:
                from segsr_basicsr.utils.checkpoint import set_rng_states
                set_rng_states(rngs[rank])
            elif rngs:
                _logger().warning(f'Training state has RNG states of {len(rngs)} processes, this run has {world}: '
                                  'random streams restart from the seed (results will differ from an '
                                  'uninterrupted run).')

        return resume_training

    def make_load_network(orig):

        def load_network(self, net, load_path, strict=True, param_key='params'):
            """basicsr's load_network, through ``torch.load(weights_only=True)`` and with errors naming the file."""
            net = self.get_bare_model(net)
            load_net = load_checkpoint(load_path, map_location='cpu')
            if param_key is not None:
                if param_key not in load_net and 'params' in load_net:
                    _logger().info(f'Loading: {param_key} does not exist in {load_path}, use params.')
                    param_key = 'params'
                if param_key not in load_net:
                    raise CheckpointError(f'{load_path} has no {param_key!r} entry (it has: '
                                          f'{", ".join(map(str, list(load_net)[:8]))}). Set path:param_key_g to one '
                                          'of them, or to ~ for a bare state_dict.')
                load_net = load_net[param_key]
            _logger().info(f'Loading {net.__class__.__name__} model from {load_path}, with param key: [{param_key}].')
            load_net = {(k[7:] if k.startswith('module.') else k): v for k, v in load_net.items()}
            self._print_different_keys_loading(net, load_net, strict)
            try:
                net.load_state_dict(load_net, strict=strict)
            except RuntimeError as e:
                details = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
                more = f' (+{len(details) - 2} more)' if len(details) > 2 else ''
                raise CheckpointError(f'The weights in {load_path} do not fit network {net.__class__.__name__}: '
                                      f'{"; ".join(details[:2])}{more}. Check that network_g matches the checkpoint, '
                                      'or set path:strict_load_g: false to load only the matching part.') from None

        return load_network

    def make_validation(orig):

        def validation(self, dataloader, current_iter, tb_logger, save_img=False):
            """Rank 0 validates alone in basicsr; the others wait here (long timeout) instead of in the next step."""
            orig(self, dataloader, current_iter, tb_logger, save_img)
            if self.opt.get('dist') and _dist_ready():
                import torch.distributed as dist
                dist.barrier()

        return validation

    _patch(BaseModel, 'model_to_device', make_model_to_device)
    _patch(BaseModel, 'save_network', make_save_network)
    _patch(BaseModel, 'save_training_state', make_save_training_state)
    _patch(BaseModel, 'resume_training', make_resume_training)
    _patch(BaseModel, 'load_network', make_load_network)
    _patch(BaseModel, 'validation', make_validation)


def _save_with_retry(obj, path, retries=3):
    import time

    from segsr_basicsr.utils.checkpoint import atomic_save
    for attempt in range(retries):
        try:
            return atomic_save(obj, path)
        except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
            if attempt == retries - 1:
                raise OSError(f'Cannot save {path}: {e}. Free disk space or fix permissions of '
                              f'{os.path.dirname(path)}; earlier checkpoints are intact.') from e
            _logger().warning(f'Save {path} failed ({e}), retrying.')
            time.sleep(1)


# ----------------------------------------------------------------------------- resume
def _patch_train():
    import torch

    import basicsr.train as train
    from basicsr.data.data_sampler import EnlargedSampler
    from basicsr.utils import scandir
    from basicsr.utils.misc import check_resume
    from segsr_basicsr.utils.checkpoint import CheckpointError, load_checkpoint

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
            if _dist_ready():  # every process must continue from the same state, or DDP hangs later
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
    """Install everything (idempotent)."""
    global _applied
    if _applied:
        return
    _install_functional_tensor()
    _ensure_distutils()
    import basicsr  # noqa: F401  (now importable)
    _patch_registry()
    _patch_options()
    _patch_dist()
    _patch_base_model()
    _patch_train()
    _applied = True
