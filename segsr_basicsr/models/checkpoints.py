"""Checkpoints of SeGSRModel: atomic saves, RNG states in training states, weights-only loading.

BasicSR's BaseModel versions assume CUDA, write checkpoints non-atomically and load them with full
pickle; these are overrides (a mixin placed before SRModel), so other BasicSR models keep BasicSR's
behaviour.
"""
from os import path as osp

from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import get_dist_info

from segsr_basicsr.errors import CheckpointError
from segsr_basicsr.io.checkpoint import (get_rng_states, load_checkpoint, network_metadata, pick_state_dict,
                                         save_with_retry, set_rng_states, strip_module_prefix)
from segsr_basicsr.utils.dist import gather_objects


class CheckpointsMixin:
    """save_network / save_training_state / resume_training / load_network for a BasicSR BaseModel."""

    def save_network(self, net, net_label, current_iter, param_key='params'):
        """Rank 0 writes ``{label}_{iter}.pth`` atomically (BasicSR's save can leave a truncated file)."""
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
        """BasicSR's optimizer/scheduler reload, plus this rank's RNG states."""
        super().resume_training(resume_state)
        rngs = resume_state.get('rng_states')
        rank, world = get_dist_info()
        if rngs and len(rngs) == world:
            set_rng_states(rngs[rank])
        elif rngs:
            get_root_logger().warning(
                f'Training state has RNG states of {len(rngs)} processes, this run has {world}: random streams '
                'restart from the seed (results will differ from an uninterrupted run).')

    def load_network(self, net, load_path, strict=True, param_key='params'):
        """BasicSR's load_network through ``torch.load(weights_only=True)``, with errors naming the file."""
        net = self.get_bare_model(net)
        ckpt = load_checkpoint(load_path, map_location='cpu')
        if param_key is not None and param_key not in ckpt and 'params' in ckpt:
            get_root_logger().info(f'Loading: {param_key} does not exist in {load_path}, use params.')
            param_key = 'params'
        hint = 'set path:param_key_g to one of them, or to ~ for a bare state_dict'
        if param_key is None:
            state = strip_module_prefix(ckpt)
        else:
            state, _ = pick_state_dict(ckpt, param_key, source=load_path, hint=hint)
        get_root_logger().info(f'Loading {net.__class__.__name__} model from {load_path}, '
                               f'with param key: [{param_key}].')
        self._print_different_keys_loading(net, state, strict)
        try:
            net.load_state_dict(state, strict=strict)
        except RuntimeError as e:
            details = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
            more = f' (+{len(details) - 2} more)' if len(details) > 2 else ''
            raise CheckpointError(f'The weights in {load_path} do not fit network {net.__class__.__name__}: '
                                  f'{"; ".join(details[:2])}{more}. Check that network_g matches the checkpoint, '
                                  'or set path:strict_load_g: false to load only the matching part.') from None
