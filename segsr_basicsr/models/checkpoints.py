"""Checkpoints of SeGSRModel: atomic saves, RNG states in training states, weights-only loading.

BasicSR's BaseModel versions assume CUDA, write checkpoints non-atomically and load them with full
pickle; these are overrides (a mixin placed before SRModel), so other BasicSR models keep BasicSR's
behaviour.
"""
import os
from os import path as osp

from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import get_dist_info

from segsr_basicsr.archs.network_options import (PARAM_KEY_HINT, describe_checkpoint, describe_network,
                                                load_weights)
from segsr_basicsr.io.checkpoint import (META_KEY, get_rng_states, load_checkpoint, network_metadata, pick_state_dict, save_with_retry, set_rng_states,
                                         strip_module_prefix)
from segsr_basicsr.metrics.registered import better
from segsr_basicsr.utils.dist import gather_objects

#: checkpoint entry of net_g_best.pth: {metric, value, iter, better, dataset}
BEST_KEY = 'segsr_best'


class CheckpointsMixin:
    """save_network / save_training_state / resume_training / load_network for a BasicSR BaseModel."""

    def save_network(self, net, net_label, current_iter, param_key='params', extra=None):
        """Rank 0 writes ``{label}_{iter}.pth`` atomically (BasicSR's save can leave a truncated file);
        ``current_iter`` -1 is 'latest', a string names the file (``'best'``); ``extra`` entries are added."""
        if get_dist_info()[0] != 0:
            return
        label = 'latest' if current_iter == -1 else current_iter
        save_path = osp.join(self.opt['path']['models'], f'{net_label}_{label}.pth')
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        if len(nets) != len(keys):
            raise ValueError(f'save_network: {len(nets)} networks but {len(keys)} param keys.')
        save_dict = {key: strip_module_prefix({k: v.cpu() for k, v in self.get_bare_model(n).state_dict().items()})
                     for n, key in zip(nets, keys)}
        if net_label == 'net_g':  # self-describing: segsr-infer / load_model need no option file
            save_dict.update(network_metadata(self.opt))
            if isinstance(current_iter, int):  # the iteration reached (latest: the end of training)
                it = current_iter if current_iter != -1 else self.opt.get('train', {}).get('total_iter')
                save_dict[META_KEY]['iter'] = int(it) if it is not None else None
        save_dict.update(extra or {})
        save_with_retry(save_dict, save_path)

    def save_training_state(self, epoch, current_iter):
        """Atomic ``{iter}.state`` with every rank's RNG states, so a resumed run continues the same sequence.

        Called on every rank (gathers the RNG states); only rank 0 writes.
        """
        if current_iter == -1:
            return
        rngs = gather_objects(get_rng_states())
        if get_dist_info()[0] != 0:
            return
        state = {
            'epoch': epoch,
            'iter': current_iter,
            'optimizers': [o.state_dict() for o in self.optimizers],
            'schedulers': [s.state_dict() for s in self.schedulers],
            'rng_states': rngs,
        }
        save_with_retry(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state):
        """BasicSR's optimizer/scheduler reload, plus this rank's RNG states and the best validation so far."""
        super().resume_training(resume_state)
        self._resume_best_record(resume_state['iter'])
        rngs = resume_state.get('rng_states')
        rank, world = get_dist_info()
        if rngs and len(rngs) == world:
            set_rng_states(rngs[rank])
        elif rngs:
            get_root_logger().warning(
                f'Training state has RNG states of {len(rngs)} processes, this run has {world}: random streams '
                'restart from the seed (results will differ from an uninterrupted run).')

    def load_network(self, net, load_path, strict=True, param_key='params'):
        """BasicSR's load_network through ``torch.load(weights_only=True)``; weights that do not fit are one line
        saying what the file holds (:func:`~segsr_basicsr.archs.network_options.load_weights`)."""
        net = self.get_bare_model(net)
        ckpt = load_checkpoint(load_path, map_location='cpu')
        if isinstance(ckpt, dict) and param_key is not None and param_key not in ckpt and 'params' in ckpt:
            get_root_logger().info(f'Loading: {param_key} does not exist in {load_path}, use params.')
            param_key = 'params'
        # param_key ~: params_ema / params when present, else a bare state_dict (the option pass reads the same)
        state, _ = pick_state_dict(ckpt, param_key, source=load_path, hint=PARAM_KEY_HINT)
        get_root_logger().info(f'Loading {net.__class__.__name__} model from {load_path}, '
                               f'with param key: [{param_key}].')
        self._print_different_keys_loading(net, state, strict)
        load_weights(net, state, strict, load_path, describe_checkpoint(ckpt, state),
                     describe_network(self.opt['network_g'], self.opt.get('scale')))

    # ----------------------------------------------------------------- the best network
    def _initialize_best_metric_results(self, dataset_name):
        """BasicSR's, with each metric's direction from :func:`~segsr_basicsr.metrics.registered.better`
        (BasicSR takes 'higher' for any metric without ``better``, so SAM/ERGAS kept their worst value)."""
        fresh = dataset_name not in getattr(self, 'best_metric_results', {})
        super()._initialize_best_metric_results(dataset_name)
        if fresh:
            for metric, record in self.best_metric_results[dataset_name].items():
                way = better(self.opt['val']['metrics'][metric])
                record.update(better=way, val=float('-inf') if way == 'higher' else float('inf'))

    def _best_metric(self):
        val = self.opt.get('val') or {}
        metrics = val.get('metrics') or {}
        return val.get('best_metric') or next(iter(metrics), None)

    def save_best(self, dataset_name, current_iter):
        """After a validation: if ``val.best_metric`` (default: the first metric) just improved on the first
        validation set, write ``net_g_best.pth`` (EMA too) with the iteration and value in its metadata."""
        metric = self._best_metric()
        first = self.__dict__.setdefault('_best_dataset', dataset_name)
        if metric is None or dataset_name != first:
            return
        record = self.best_metric_results[dataset_name][metric]
        if record['iter'] != current_iter:
            return
        total = int(self.opt['train'].get('total_iter', current_iter))  # BasicSR's final validation is total + 1
        meta = {BEST_KEY: {'metric': metric, 'value': float(record['val']), 'iter': min(int(current_iter), total),
                           'better': record['better'], 'dataset': dataset_name}}
        nets, keys = ([self.net_g, self.net_g_ema], ['params', 'params_ema']) if hasattr(self, 'net_g_ema') \
            else (self.net_g, 'params')
        self.save_network(nets, 'net_g', 'best', keys, extra=meta)
        get_root_logger().info(f'Best {metric} so far on {dataset_name}: {record["val"]:.4f} at iteration '
                               f'{meta[BEST_KEY]["iter"]}; saved net_g_best.pth.')

    def _resume_best_record(self, resume_iter):
        """A resumed run knows the best so far: the record of net_g_best.pth, if it is not from after the
        resumed iteration (a run killed after its last checkpoint re-validates those iterations)."""
        path = osp.join(self.opt['path']['models'], 'net_g_best.pth')
        if not osp.isfile(path) or self._best_metric() is None:
            return
        best = load_checkpoint(path).get(BEST_KEY) or {}
        if best.get('iter', resume_iter + 1) > resume_iter or best.get('metric') != self._best_metric():
            return
        self._initialize_best_metric_results(best['dataset'])
        self.best_metric_results[best['dataset']][best['metric']].update(val=best['value'], iter=best['iter'])
        self._best_dataset = best['dataset']

    # ----------------------------------------------------------------- bounded disk
    def save(self, epoch, current_iter):
        """BasicSR's save (networks, then the training state), then ``logger.keep_checkpoints`` retention."""
        super().save(epoch, current_iter)
        keep = (self.opt.get('logger') or {}).get('keep_checkpoints')
        if keep and current_iter != -1 and get_dist_info()[0] == 0:
            prune_checkpoints(self.opt, int(keep))


def complete_iterations(opt):
    """Iterations whose training state and every network file are on disk (what --auto_resume can use)."""
    states = opt['path']['training_states']
    found = set()
    for name in (os.listdir(states) if osp.isdir(states) else []):
        stem, dot, ext = name.partition('.')
        if ext == 'state' and stem.isdigit():
            found.add(int(stem))
    labels = [k.replace('network_', 'net_') for k in opt if k.startswith('network_')]
    models = opt['path']['models']
    return sorted(i for i in found if all(osp.isfile(osp.join(models, f'{lab}_{i}.pth')) for lab in labels))


def prune_checkpoints(opt, keep):
    """Delete the networks and states of periodic checkpoints older than the newest ``keep`` complete ones.
    Runs after a save is complete; net_*_best/latest and anything newer than what is kept stay."""
    complete = complete_iterations(opt)
    if len(complete) <= keep:
        return
    oldest_kept = complete[-keep]
    for folder in (opt['path']['models'], opt['path']['training_states']):
        for name in os.listdir(folder):
            stem = name.rsplit('.', 1)[0]
            number = stem.rsplit('_', 1)[-1]
            if name.endswith(('.pth', '.state')) and number.isdigit() and int(number) < oldest_kept:
                os.remove(osp.join(folder, name))


def warn_if_disk_is_short(model):
    """Before training: one warning when the experiment folder's free space is below the checkpoints the run
    will keep (network + EMA + optimizer state per checkpoint, estimated from the tensors' sizes)."""
    import shutil

    opt = model.opt
    logger_opt, train = opt.get('logger') or {}, opt.get('train') or {}
    freq = logger_opt.get('save_checkpoint_freq') or 0
    count = logger_opt.get('keep_checkpoints') or (int(train.get('total_iter', 0)) // int(freq) if freq else 0)
    net = sum(v.numel() * v.element_size() for v in model.get_bare_model(model.net_g).state_dict().values())
    trainable = sum(p.numel() * p.element_size() for p in model.net_g.parameters() if p.requires_grad)
    per = net * (2 if hasattr(model, 'net_g_ema') else 1) + 2 * trainable  # Adam keeps two moments
    need = per * (count + 2) - 2 * trainable  # + net_g_best.pth and net_g_latest.pth
    root = opt['path'].get('experiments_root') or '.'
    free = shutil.disk_usage(root if osp.isdir(root) else '.').free
    if get_dist_info()[0] == 0 and free < need:
        get_root_logger().warning(
            f'{root} has {free / 2**30:.1f} GiB free, but the {count} checkpoints this run keeps (plus best and '
            f'latest) need about {need / 2**30:.1f} GiB; set logger.keep_checkpoints or free some space.')
