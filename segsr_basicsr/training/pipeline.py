"""How our entry points drive BasicSR's train/test pipelines: check, patch, run.

:func:`run` validates the option file and every input before any work, applies :func:`patch_train_loop`
and hands over to BasicSR's ``train_pipeline`` / ``test_pipeline``. :func:`patch_train_loop` wraps the
few module-level functions of BasicSR's train loop that a model class cannot override: option parsing
(YAML *safe* loader, ``--force_yml`` without ``exec``, ``--local-rank``), process-group init (gloo on
CPU, nccl on CUDA, long timeout), the resume-state lookup (CPU-safe, ``--auto_resume`` skips
incomplete states) and the data loaders (own seed generators, mid-epoch sampler resume). It is applied
when an entry point runs, never by importing the package, so HAT or Real-ESRGAN models next to ours keep
BasicSR's behaviour. Each patch keeps BasicSR's function as ``__segsr_original__`` (:func:`original`).
"""
import argparse
import os
import sys

import torch

from segsr_basicsr.archs.network_options import check_pretrained, describe_network
from segsr_basicsr.errors import CheckpointError
from segsr_basicsr.io.checkpoint import META_KEY, load_checkpoint, network_metadata
from segsr_basicsr.io.option_file import load_option_file, unknown_top_level_keys
from segsr_basicsr.utils.cli import exit_on_user_error, warning_line
from segsr_basicsr.options import check_cpu_options, validate_options
from segsr_basicsr.utils.preflight import check_run
from segsr_basicsr.training.cpu_arithmetic import pin_cpu_arithmetic
from segsr_basicsr.training.stop import STOP, STOP_EXIT_CODE, signal_numbers
from segsr_basicsr.compat import original, patch as _patch  # noqa: F401
from segsr_basicsr.utils.dist import DIST_TIMEOUT_ENV, dist_ready, dist_timeout, patch_dist, record_stop  # noqa: F401

_train_loop_patched = False


# ----------------------------------------------------------------------------- helpers
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


# ----------------------------------------------------------------------------- resume
def _resumable_sampler_class():
    from basicsr.data.data_sampler import EnlargedSampler

    class ResumableEnlargedSampler(EnlargedSampler):
        """EnlargedSampler that can skip the batches of the resumed epoch that were already trained on."""

        _resume_epoch = None
        _resume_skip = 0

        def resume_at(self, epoch, skip):
            self._resume_epoch, self._resume_skip = epoch, skip

        def set_epoch(self, epoch):
            super().set_epoch(epoch)
            STOP.epoch = epoch  # a stop on a signal saves the epoch in progress
            if epoch != self._resume_epoch:
                self._resume_epoch = None

        def __iter__(self):
            indices = list(super().__iter__())
            if self.epoch == self._resume_epoch:
                indices = indices[self._resume_skip:]
            return iter(indices)

    return ResumableEnlargedSampler


def _missing_networks(opt, it):
    ignore = opt['path'].get('ignore_resume_networks') or []
    for key in opt:
        if key.startswith('network_') and key not in ignore:
            name = key.replace('network_', '')
            path = os.path.join(opt['path']['models'], f'net_{name}_{it}.pth')
            if not os.path.isfile(path):
                return f'its network file {path} is missing.'
    return None


def _latest_usable_state(opt, device):
    """``--auto_resume``: the newest training state that loads and has its network files, or None."""
    from basicsr.utils import scandir
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
        return state
    if candidates:
        _print(f'No usable training state in {state_dir}: starting from scratch.')
    else:
        _print(f'--auto_resume: no training state under {state_dir} yet, starting from scratch.')
    return None


def _check_state(opt, state):
    """A loaded state is a BasicSR training state whose networks exist; every rank resumes the same one."""
    if dist_ready():  # every process must continue from the same state, or DDP hangs later
        import torch.distributed as dist
        chosen = [None] * dist.get_world_size()
        dist.all_gather_object(chosen, None if state is None else state.get('iter'))
        if len(set(chosen)) > 1:
            raise CheckpointError(f'The processes would resume from different iterations {chosen} (rank order, '
                                  'None = from scratch). Is experiments/ on a shared file system, in sync?')
    if state is None:
        return
    for key in ('iter', 'epoch', 'optimizers', 'schedulers'):
        if key not in state:
            raise CheckpointError(f'{opt["path"]["resume_state"]} is not a basicsr training state (no '
                                  f'{key!r}). path:resume_state takes experiments/<name>/training_states/'
                                  '<iter>.state; network weights go to path:pretrain_network_g.')
    missing = _missing_networks(opt, state['iter'])
    if missing:
        raise CheckpointError(f'Cannot resume from {opt["path"]["resume_state"]}: {missing}')
    problem = _other_run(opt, state['iter'])
    if problem:
        raise CheckpointError(f'Cannot resume from {opt["path"]["resume_state"]}: {problem}')


def _other_run(opt, it):
    """Why a state cannot continue under this option file: it is past train:total_iter (the result would be
    labelled with an iteration that is not its own), or its net_g was saved with another network_g / scale."""
    total = (opt.get('train') or {}).get('total_iter')
    models = opt['path']['models']
    if total is not None and int(total) < it:
        return (f'it is at iteration {it}, past train:total_iter {int(total)}. Raise train:total_iter above {it} '
                f'to train further; the weights of iteration {it} are {os.path.join(models, f"net_g_{it}.pth")}.')
    net_file = os.path.join(models, f'net_g_{it}.pth')
    if 'network_g' not in opt or not os.path.isfile(net_file):
        return None
    saved = load_checkpoint(net_file).get(META_KEY)
    if not isinstance(saved, dict) or not isinstance(saved.get('network_g'), dict):
        return None  # saved before checkpoints carried network_g: the strict load checks the shapes
    ours = network_metadata(opt)[META_KEY]
    if saved['network_g'] == ours['network_g'] and saved.get('scale') == ours['scale']:
        return None
    keys = sorted(k for k in set(saved['network_g']) | set(ours['network_g'])
                  if saved['network_g'].get(k) != ours['network_g'].get(k))
    changed = ', '.join(f'network_g:{k} {saved["network_g"].get(k)!r} -> {ours["network_g"].get(k)!r}'
                        for k in keys[:3]) or f'scale {saved.get("scale")} -> {ours["scale"]}'
    return (f'its {net_file} holds {describe_network(saved["network_g"], saved.get("scale"))}, this option file '
            f'builds {describe_network(ours["network_g"], ours["scale"])} ({changed}). Resume with the option file '
            'of that run, or train the new network under another name.')


def load_resume_state(opt):
    """basicsr's resume lookup, on CPU or CUDA; ``--auto_resume`` skips unreadable/incomplete states."""
    from basicsr.utils.misc import check_resume
    if torch.cuda.is_available() and opt.get('num_gpu', 0) != 0:
        device = torch.device('cuda', torch.cuda.current_device())
    else:
        device = torch.device('cpu')
    explicit, state = opt['path'].get('resume_state'), None
    if opt['auto_resume']:
        state = _latest_usable_state(opt, device)
    elif explicit:
        if not os.path.isfile(explicit):
            raise CheckpointError(f'path:resume_state = {explicit} does not exist. Point it to an '
                                  'experiments/<name>/training_states/<iter>.state file, or remove it and '
                                  'use --auto_resume.')
        state = load_checkpoint(explicit, map_location=device)
    _check_state(opt, state)
    if state is None:
        return None
    check_resume(opt, state['iter'])
    opt['resume_from'] = {'iter': state['iter'], 'epoch': state['epoch']}
    return state


def _make_create_loaders(orig):

    def create_train_val_dataloader(opt, logger):
        """basicsr's loaders; on resume the sampler continues mid-epoch, and loaders draw their worker base
        seed from their own generator, so data loading and validation never shift the global torch RNG."""
        result = orig(opt, logger)
        train_loader, sampler, val_loaders = result[0], result[1], result[2]
        seed = int(opt['manual_seed']) + opt.get('rank', 0)
        for loader in [train_loader, *val_loaders]:  # each new epoch / validation pass draws a seed from it
            loader.generator = torch.Generator().manual_seed(seed)
        resume = opt.get('resume_from')
        if resume and hasattr(sampler, 'resume_at'):
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


def _patch_train():
    import basicsr.train as train
    train.EnlargedSampler = _resumable_sampler_class()
    _patch(train, 'load_resume_state', lambda orig: load_resume_state)
    _patch(train, 'create_train_val_dataloader', _make_create_loaders)


def _print(msg):
    from basicsr.utils.dist_util import get_dist_info
    if get_dist_info()[0] == 0:
        print(msg, flush=True)


def patch_train_loop():
    """Entry-point part (idempotent): wrap BasicSR's train-loop functions; see the module docstring."""
    global _train_loop_patched
    from segsr_basicsr import compat
    compat.apply()
    if _train_loop_patched:
        return
    _patch_options()
    patch_dist()
    _patch_train()
    _train_loop_patched = True


# ----------------------------------------------------------------------------- the entry points
def _check_args(argv, is_train, prog='segsr'):
    """The validation pass before any work (options, then :mod:`segsr_basicsr.utils.preflight`): the option file,
    every input it names, the output folder. Runs before BasicSR builds a network or writes a file."""
    rest, overrides = split_argv(list(argv))
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt', type=str)
    known, _ = parser.parse_known_args(rest)
    if known.opt is None:
        return None  # basicsr's own argparse prints the usage
    opt = load_option_file(known.opt, overrides)
    check_cpu_options(opt, known.opt)  # num_threads, cpu_kernels: applied before the checks below compute anything
    pin_cpu_arithmetic(opt, warn=lambda line: warning_line(prog, f'{known.opt}: {line}'))
    for message in unknown_top_level_keys(opt):
        warning_line(prog, f'{known.opt}: {message}')
    net = validate_options(opt, known.opt, is_train=is_train)
    for message in check_run(opt, known.opt, is_train=is_train):
        warning_line(prog, message)
    check_pretrained(opt, known.opt, net)
    return opt


def _run_recording_stop(pipeline):
    """``pipeline(cwd)``; a stop on a signal (the model saved, then every rank raised SystemExit(75) after the
    save barrier) leaves this rank's stop record for the launcher (:func:`record_stop`)."""
    try:
        pipeline(os.getcwd())
    except SystemExit as e:
        if e.code == STOP_EXIT_CODE:
            record_stop(STOP_EXIT_CODE, f'segsr-train stopped by {STOP.name}, checkpoint saved; continue with '
                        '--auto_resume')
        raise


def run(pipeline, is_train, argv=None, prog='segsr'):
    """Validate the option file, patch BasicSR's train loop (:func:`patch_train_loop`),
    then ``pipeline(cwd)``, so experiments/, tb_logger/ and results/ land in the current directory."""
    saved = sys.argv
    if argv is not None:  # basicsr's parser reads sys.argv
        sys.argv = [sys.argv[0]] + list(argv)
    try:
        with exit_on_user_error(prog):
            opt = _check_args(sys.argv[1:], is_train, prog)
            patch_train_loop()
            if is_train and opt is not None:  # stop on a signal at an iteration boundary (training/stop.py)
                STOP.install(signal_numbers((opt.get('train') or {}).get('stop_signals')))
            _run_recording_stop(pipeline)
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():  # one line per process of a torchrun job
            print(f'{prog}: rank {dist.get_rank()}/{dist.get_world_size()} finished', flush=True)
    finally:
        sys.argv = saved
        STOP.uninstall()
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
