"""SeGSRModel: BasicSR's SRModel plus what SeG-SR training and large-scene testing need.

Over :class:`basicsr.models.sr_model.SRModel` it adds: padding to the net's
``size_multiple`` and optional tiled inference (``val.tile``); train mode restored
after validation; semantic heat maps written with ``val.save_img``; EMA over
trainable parameters and buffers only (frozen CLIP stays as loaded); a separate
learning rate for LoRA/CLIP parameters (``train.guidance_lr_mult``); gradient
clipping (``train.grad_clip``); mixed precision (``train.amp: bf16|fp16``); TF32
matmuls/convolutions on CUDA (``train.tf32``); and a hard stop on a non-finite loss.

On CUDA a training step does not wait for the GPU (no host sync): inputs are copied
non-blocking, the EMA is a fused ``torch._foreach_*`` update, losses become floats only
when BasicSR logs them, and the non-finite check reads its device-side flag only on
steps that log, save or validate (``train.finite_check_freq``). GradScaler (``amp:
fp16``) still syncs once per step; ``amp: bf16`` needs no scaler.
"""
import contextlib
from collections import OrderedDict
from os import path as osp
from typing import Dict, Optional

import torch
from basicsr.metrics import calculate_metric
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.dist_util import get_dist_info
from basicsr.utils.registry import MODEL_REGISTRY
from segsr_basicsr.utils.registry import register
from tqdm import tqdm

from segsr_basicsr.api import network_metadata
from segsr_basicsr.archs.guided import pad_to_multiple
from segsr_basicsr.errors import CheckpointError, OptionError
from segsr_basicsr.io.checkpoint import (get_rng_states, load_checkpoint, pick_state_dict, save_with_retry,
                                         set_rng_states, strip_module_prefix)
from segsr_basicsr.utils.dist import dist_ready, gather_objects
from segsr_basicsr.utils.self_ensemble import self_ensemble
from segsr_basicsr.utils.tiling import parse_tile_opt, tiled_forward

AMP_DTYPES = {'bf16': torch.bfloat16, 'bfloat16': torch.bfloat16, 'fp16': torch.float16, 'float16': torch.float16}


def parse_amp(value, where: str):
    """'bf16' | 'fp16' | None/'none'/False -> torch dtype or None."""
    if value in (None, False, 'none', 'None', 'fp32', 'float32'):
        return None
    if value not in AMP_DTYPES:
        raise OptionError(f'{where}: amp must be one of bf16, fp16 or none, got {value!r}')
    return AMP_DTYPES[value]


def autocast(device: torch.device, dtype):
    """torch.autocast on ``device``'s type, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def parse_tf32(value, device: torch.device) -> bool:
    """``train.tf32``: true/false, or ~ (default): on for CUDA (Ampere and newer run fp32 matmuls on tensor cores)."""
    if value is None:
        return device.type == 'cuda'
    if not isinstance(value, bool):
        raise OptionError(f'train.tf32 must be true, false or ~ (on for CUDA), got {value!r}')
    return value


def set_tf32(enabled: bool) -> None:
    """TF32 for float32 CUDA matmuls and cuDNN convolutions, process-wide (PyTorch's defaults: off / on).

    TF32 keeps fp32's range with a 10-bit mantissa (as bf16 autocast, but for fp32 training).
    """
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def parse_finite_check_freq(value, device: torch.device, print_freq) -> int:
    """``train.finite_check_freq``: host checks of the non-finite flag every N iterations (besides saves/validation).

    Default: every iteration on CPU (free there), every ``logger.print_freq`` on CUDA (those steps sync anyway).
    """
    if value is None:
        if device.type != 'cuda':
            return 1
        return int(print_freq) if isinstance(print_freq, (int, float)) and print_freq >= 1 else 100
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f'train.finite_check_freq must be an integer >= 1 (iterations), got {value!r}')
    return value


class NonFiniteRecord:
    """The first training iteration with a NaN/inf value (loss or gradient norm), kept on the device.

    :meth:`note` is a few tiny kernels and no host sync; reading ``iter``/``values`` back is a sync, so
    the model does it only on check steps.
    """

    def __init__(self):
        self.iter: Optional[torch.Tensor] = None  # 0-d int64 on the device, -1 while all was finite
        self.values: Dict[str, torch.Tensor] = {}  # 0-d float each: the values at ``iter``

    def note(self, current_iter: int, values: Dict[str, torch.Tensor]) -> None:
        vals = {k: v.detach().float().mean() for k, v in values.items()}
        bad = ~torch.isfinite(torch.stack(list(vals.values()))).all()
        if self.iter is None:
            self.iter = torch.full((), -1, dtype=torch.long, device=bad.device)
        first = bad & (self.iter < 0)
        self.iter.masked_fill_(first, current_iter)
        for k, v in vals.items():
            old = self.values.get(k)
            self.values[k] = v if old is None else torch.where(first, v, old)

    def flag(self, device: torch.device) -> torch.Tensor:
        """0-d float: 1. if a non-finite value was noted, else 0. (on the device, no sync)."""
        if self.iter is None:
            return torch.zeros((), device=device)
        return (self.iter >= 0).float()


def is_guidance_clip_param(net, name: str) -> bool:
    """True for parameters of the CLIP tower (LoRA adapters, or the whole tower when tuned)."""
    guidance = getattr(net, 'guidance', None)
    if guidance is not None and hasattr(guidance, 'is_clip_parameter'):
        return name.startswith('guidance.') and guidance.is_clip_parameter(name[len('guidance.'):])
    return 'lora' in name.lower() or name.startswith('guidance.clip')


def forward_padded(net, x: torch.Tensor, record_maps: bool = False):
    """(B,3,H,W) -> SR (B,3,H*s,W*s) [, K maps (B,E,H,W)]: pads to ``net.size_multiple`` and crops.

    GuidedBackbones pad internally too (then this pad is a no-op); plain BasicSR
    archs that need a multiple (SwinIR-like) get it here.
    """
    h, w = x.shape[-2:]
    x = pad_to_multiple(x, getattr(net, 'size_multiple', 1))
    out = net(x)
    s = out.shape[-2] // x.shape[-2]
    out = out[..., :h * s, :w * s]
    if not record_maps:
        return out
    maps = getattr(net, 'semantic_maps', None) or []
    return (out, *[m[..., :h, :w].float() for m in maps])


@register(MODEL_REGISTRY)
class SeGSRModel(SRModel):
    """SRModel for SeG-SR networks (any GuidedBackbone, or any BasicSR arch)."""

    def __init__(self, opt):
        val_opt = opt.get('val') or {}
        self.tile_size, self.tile_overlap = parse_tile_opt(val_opt.get('tile'))
        tile = val_opt.get('tile') if isinstance(val_opt.get('tile'), dict) else {}
        self.tile_batch = int(tile.get('batch', 1))
        self.tile_margin = tile.get('margin')
        self.val_amp = parse_amp(val_opt.get('amp'), 'val.amp')
        self.self_ensemble = val_opt.get('self_ensemble', False)
        if not isinstance(self.self_ensemble, bool):
            raise OptionError(f'val.self_ensemble must be true or false, got {self.self_ensemble!r}')
        super().__init__(opt)

    # ----------------------------------------------------------------- processes and checkpoints
    # BasicSR's BaseModel versions of these assume CUDA, write checkpoints non-atomically and load
    # them with full pickle; ours are overrides, so other BasicSR models keep BasicSR's behaviour.
    def model_to_device(self, net):
        """DDP on CPU must not get ``device_ids`` (BasicSR passes ``torch.cuda.current_device()``), and BasicSR's
        DataParallel path (num_gpu > 1 without a launcher) is refused for training guided networks: it splits
        every batch over replicas, and autocast (thread-local) does not reach them; torchrun (DDP) is right."""
        num_gpu = self.opt.get('num_gpu', 0)
        if self.opt.get('is_train') and not self.opt.get('dist') and isinstance(num_gpu, int) and num_gpu > 1 \
                and getattr(net, 'guidance', None) is not None:
            raise OptionError(f'num_gpu: {num_gpu} without --launcher would wrap the guided network in DataParallel, '
                              f'which SeG-SR does not support: run torchrun --nproc_per_node={num_gpu} -m '
                              'segsr_basicsr.train -opt YOUR_OPTIONS.yml --launcher pytorch (or set num_gpu: 1)')
        if self.opt['dist'] and self.device.type != 'cuda':
            from torch.nn.parallel import DistributedDataParallel
            return DistributedDataParallel(
                net.to(self.device), find_unused_parameters=self.opt.get('find_unused_parameters', False))
        return super().model_to_device(net)

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

    def validation(self, dataloader, current_iter, tb_logger, save_img=False):
        """Rank 0 validates alone in BasicSR; the others wait here (long timeout) instead of in the next step."""
        super().validation(dataloader, current_iter, tb_logger, save_img)
        if self.opt.get('dist') and dist_ready():
            import torch.distributed as dist
            dist.barrier()

    # ----------------------------------------------------------------- training setup
    def init_training_settings(self):
        train_opt = self.opt['train']
        self.amp_dtype = parse_amp(train_opt.get('amp'), 'train.amp')
        self.grad_clip = train_opt.get('grad_clip')
        if self.grad_clip is not None and not (isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0):
            raise OptionError(f'train.grad_clip must be a positive max gradient norm or ~, got {self.grad_clip!r}')
        self.tf32 = parse_tf32(train_opt.get('tf32'), self.device)
        if self.device.type == 'cuda':
            set_tf32(self.tf32)
            get_root_logger().info(f'TF32 matmuls and convolutions: {"on" if self.tf32 else "off"} (train.tf32).')
        elif train_opt.get('tf32'):
            get_root_logger().info(f'train.tf32 has no effect on {self.device.type}.')
        self.finite_check_freq = parse_finite_check_freq(train_opt.get('finite_check_freq'), self.device,
                                                         (self.opt.get('logger') or {}).get('print_freq'))
        self._nonfinite_loss, self._nonfinite_grad = NonFiniteRecord(), NonFiniteRecord()
        use_scaler = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler) if use_scaler else None
        if self.amp_dtype is not None:
            get_root_logger().info(f'Mixed precision: {self.amp_dtype} autocast on {self.device.type}'
                                   f'{" with GradScaler" if use_scaler else ""}.')
        super().init_training_settings()

    def model_ema(self, decay=0.999):
        """EMA of trainable parameters and floating buffers; frozen parameters are left alone.

        BasicSR's version walks every parameter, i.e. also the frozen CLIP tower
        (~86 M for ViT-B/16): wasted work, and the EMA copy must equal the loaded
        CLIP anyway. Non-float buffers (indices, counters) are copied. The update is
        two fused ``torch._foreach_*`` calls (ema = ema * decay + p * (1 - decay), the
        same arithmetic as a per-tensor loop), not two kernel launches per tensor
        (~900 tensors for the paper's network).
        """
        net_g = self.get_bare_model(self.net_g)
        ema_params = dict(self.net_g_ema.named_parameters())
        ema_buffers = dict(self.net_g_ema.named_buffers())
        avg_ema, avg_src = [], []  # averaged: trainable parameters and float buffers
        with torch.no_grad():
            for k, p in net_g.named_parameters():
                if p.requires_grad:
                    avg_ema.append(ema_params[k])
                    avg_src.append(p)
                elif decay == 0:  # initial copy, e.g. no pretrained weights for the EMA net
                    ema_params[k].copy_(p)
            for k, b in net_g.named_buffers():
                if k not in ema_buffers:
                    continue
                if b.is_floating_point():
                    avg_ema.append(ema_buffers[k])
                    avg_src.append(b)
                else:
                    ema_buffers[k].copy_(b)
            if avg_ema:
                torch._foreach_mul_(avg_ema, decay)
                torch._foreach_add_(avg_ema, avg_src, alpha=1 - decay)

    def setup_optimizers(self):
        """Two param groups: the SR network at ``lr``, LoRA/CLIP at ``lr * guidance_lr_mult``."""
        train_opt = self.opt['train']
        optim_opt = dict(train_opt['optim_g'])
        optim_type = optim_opt.pop('type')
        mult = optim_opt.pop('clip_lr_mult', None)
        mult = train_opt.get('guidance_lr_mult', 1.0) if mult is None else mult
        if not (isinstance(mult, (int, float)) and mult >= 0):
            raise OptionError(f'train.guidance_lr_mult must be a number >= 0, got {mult!r}')
        lr = optim_opt.pop('lr')
        net = self.get_bare_model(self.net_g)
        main, clip, frozen = [], [], 0
        for k, v in net.named_parameters():
            if not v.requires_grad:
                frozen += v.numel()
            elif is_guidance_clip_param(net, k):
                clip.append(v)
            else:
                main.append(v)
        groups = [{'params': main, 'lr': lr, 'name': 'sr'}]
        if clip:
            groups.append({'params': clip, 'lr': lr * mult, 'name': 'guidance_clip'})
        logger = get_root_logger()
        logger.info(f'Optimizer {optim_type}: {sum(p.numel() for p in main):,d} params at lr {lr:g}, '
                    f'{sum(p.numel() for p in clip):,d} LoRA/CLIP params at lr {lr * mult:g}, '
                    f'{frozen:,d} frozen.')
        self.optimizer_g = self.get_optimizer(optim_type, groups, lr, **optim_opt)
        self.optimizers.append(self.optimizer_g)

    def get_optimizer(self, optim_type, params, lr, **kwargs):
        """Any torch.optim optimizer by name (BasicSR 1.4.2 knows only Adam)."""
        cls = getattr(torch.optim, optim_type, None)
        if cls is None or not isinstance(cls, type) or not issubclass(cls, torch.optim.Optimizer):
            raise OptionError(f'train.optim_g.type: {optim_type!r} is not a torch.optim optimizer')
        return cls(params, lr, **kwargs)

    # ----------------------------------------------------------------- one step
    def feed_data(self, data):
        """SRModel's, copying non-blocking: a blocking host-to-device copy waits for the GPU to finish the previous
        step. From pinned memory (dataset ``pin_memory: true``) the copy also overlaps with compute."""
        self.lq = data['lq'].to(self.device, non_blocking=True)
        if 'gt' in data:
            self.gt = data['gt'].to(self.device, non_blocking=True)

    def optimize_parameters(self, current_iter):
        self.optimizer_g.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp_dtype):
            self.output = self.net_g(self.lq)
        output = self.output.float()  # losses in fp32

        l_total = 0
        loss_dict = OrderedDict()
        if self.cri_pix:
            l_pix = self.cri_pix(output, self.gt)
            l_total += l_pix
            loss_dict['l_pix'] = l_pix
        if self.cri_perceptual:
            l_percep, l_style = self.cri_perceptual(output, self.gt)
            if l_percep is not None:
                l_total += l_percep
                loss_dict['l_percep'] = l_percep
            if l_style is not None:
                l_total += l_style
                loss_dict['l_style'] = l_style

        check = self._finite_check_due(current_iter)
        self._nonfinite_loss.note(current_iter, loss_dict or {'l_total': l_total})
        if check:
            self._raise_if_nonfinite(self._nonfinite_loss, 'loss', current_iter)
        if self.scaler is not None:
            self.scaler.scale(l_total).backward()
            if self.grad_clip:
                self.scaler.unscale_(self.optimizer_g)
                torch.nn.utils.clip_grad_norm_(self._trainable(), self.grad_clip)
            self.scaler.step(self.optimizer_g)  # skips the step on inf/nan grads, lowers the scale (syncs)
            self.scaler.update()
        else:
            l_total.backward()
            if self.grad_clip:
                norm = torch.nn.utils.clip_grad_norm_(self._trainable(), self.grad_clip)
                self._nonfinite_grad.note(current_iter, {'grad_norm': norm})
                if check:
                    self._raise_if_nonfinite(self._nonfinite_grad, 'gradient norm', current_iter)
            self.optimizer_g.step()

        self._pending_log = (list(loss_dict), self._reduce_losses(loss_dict))
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    @property
    def log_dict(self):
        """The last step's losses as floats, as BasicSR logs them; read back when asked for (on CUDA the host
        syncs on the steps that log, not on every step)."""
        pending = self.__dict__.pop('_pending_log', None)
        if pending is not None:
            keys, values = pending
            self._log_dict = OrderedDict(zip(keys, values.tolist()))
        return self._log_dict

    @log_dict.setter
    def log_dict(self, value):
        self.__dict__.pop('_pending_log', None)
        self._log_dict = value

    def _reduce_losses(self, loss_dict) -> torch.Tensor:
        """BasicSR's ``reduce_loss_dict`` without ``.item()``: (n_losses,) on the device, DDP mean on rank 0."""
        with torch.no_grad():
            if not loss_dict:
                return torch.zeros(0)
            losses = torch.stack([v.detach().float().mean() for v in loss_dict.values()])
            if self.opt.get('dist'):
                import torch.distributed as dist
                dist.reduce(losses, dst=0)
                if self.opt.get('rank', 0) == 0:
                    losses /= self.opt['world_size']
            return losses

    def _trainable(self):
        return [p for p in self.net_g.parameters() if p.requires_grad]

    def _finite_check_due(self, current_iter) -> bool:
        """Read the non-finite flag on the host this step? Every ``finite_check_freq`` iterations, and always
        before BasicSR saves or validates (so no checkpoint is written after a non-finite step) and at the end."""
        if self.finite_check_freq <= 1:
            return True
        total = self.opt['train'].get('total_iter')
        if total is not None and current_iter >= int(total):
            return True
        freqs = (self.finite_check_freq, (self.opt.get('logger') or {}).get('save_checkpoint_freq'),
                 (self.opt.get('val') or {}).get('val_freq'))
        return any(isinstance(f, (int, float)) and f > 0 and current_iter % f == 0 for f in freqs)

    def _raise_if_nonfinite(self, record: NonFiniteRecord, what: str, current_iter: int):
        """Raise before the optimizer step when ``record`` holds a NaN/inf (one host sync).

        Under DDP all ranks agree first (one scalar all-reduce on the same check steps), so they stop
        together instead of the healthy ranks hanging in the next gradient all-reduce.
        """
        flag = record.flag(self.device)
        local = flag.clone()
        if self.opt.get('dist'):
            import torch.distributed as dist
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if not bool(flag):
            return
        models = self.opt['path'].get('models', 'experiments/<name>/models')
        advice = ('Check the data for NaNs, lower the learning rate, set train.grad_clip, or use train.amp: bf16 '
                  'instead of fp16.')
        if not bool(local):
            raise FloatingPointError(
                f'Non-finite {what} on another rank by iteration {current_iter} (rank {self.opt.get("rank", 0)} '
                f'is finite). Training stopped before the optimizer step; the last saved checkpoint in {models} is '
                f'intact (resume from it with path.resume_state). {advice}')
        first = int(record.iter)
        values = ', '.join(f'{k}={v.item():.6g}' for k, v in record.values.items())
        if first == current_iter:
            raise FloatingPointError(
                f'Non-finite {what} at iteration {current_iter}: {values}. Training stopped before the optimizer '
                f'step: the network was not updated and the last saved checkpoint in {models} is intact (resume '
                f'from it with path.resume_state). {advice}')
        raise FloatingPointError(
            f'Non-finite {what} at iteration {first}: {values}, found at iteration {current_iter} (on '
            f'{self.device.type} the flag is read every {self.finite_check_freq} iterations and before every save '
            f'and validation: train.finite_check_freq). Training stopped; nothing was saved after iteration '
            f'{first}, so the last saved checkpoint in {models} is intact (resume from it with '
            f'path.resume_state). {advice}')

    # ----------------------------------------------------------------- inference
    def _test_net(self):
        return self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g

    def infer(self, lq: torch.Tensor, record_maps: bool = False, progress=None):
        """(B,3,H,W) -> SR (B,3,H*s,W*s) [, maps]: eval + no_grad, tiled when ``val.tile`` is set,
        averaged over the 8 flips/rotations when ``val.self_ensemble`` is true (each view tiled alike).

        Leaves ``net_g`` in the mode it had (BasicSR/HAT leave it in eval mode).
        """
        net = self.get_bare_model(self._test_net())
        was_training = net.training
        has_flag = hasattr(net, 'record_semantic_maps')
        record_maps = record_maps and has_flag
        net.eval()
        if record_maps:
            net.record_semantic_maps = True
        try:
            with torch.no_grad(), autocast(self.device, self.val_amp):
                fn = lambda t: forward_padded(net, t, record_maps)  # noqa: E731
                if self.tile_size:
                    def view(t):
                        return tiled_forward(fn, t, self.tile_size, self.tile_overlap, margin=self.tile_margin,
                                             multiple=getattr(net, 'size_multiple', 1), batch=self.tile_batch,
                                             device=self.device, progress=progress)
                else:
                    def view(t):
                        return fn(t.to(self.device))
                out = self_ensemble(view, lq) if self.self_ensemble else view(lq)
        finally:
            if record_maps:
                net.record_semantic_maps = False
                net.semantic_maps = None
            net.train(was_training)
        if isinstance(out, tuple):
            return out[0].float(), list(out[1:])
        return (out.float(), []) if record_maps else out.float()

    def test(self):
        self.output = self.infer(self.lq)

    # ----------------------------------------------------------------- validation
    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """SRModel's loop, plus semantic heat maps when ``save_img`` (maps are only recorded then)."""
        from segsr_basicsr.utils.visualize import semantic_overlays

        dataset_name = dataloader.dataset.opt['name']
        val_opt = self.opt['val']
        with_metrics = val_opt.get('metrics') is not None
        use_pbar = val_opt.get('pbar', False)
        if with_metrics:
            if not hasattr(self, 'metric_results'):
                self.metric_results = {metric: 0 for metric in val_opt['metrics'].keys()}
            self._initialize_best_metric_results(dataset_name)
            self.metric_results = {metric: 0 for metric in self.metric_results}
        net_training = self.get_bare_model(self.net_g).training
        pbar = tqdm(total=len(dataloader), unit='image') if use_pbar else None
        metric_data = dict()
        per_image = []  # (image stem, {metric: value}) for the per-class tables of a test run
        try:
            for idx, val_data in enumerate(dataloader):
                img_name = osp.splitext(osp.basename(val_data['lq_path'][0]))[0]
                self.feed_data(val_data)
                if save_img:
                    self.output, maps = self.infer(self.lq, record_maps=True)
                else:
                    self.output, maps = self.infer(self.lq), []
                visuals = self.get_current_visuals()
                sr_img = tensor2img([visuals['result']])
                metric_data['img'] = sr_img
                if 'gt' in visuals:
                    metric_data['img2'] = tensor2img([visuals['gt']])
                    del self.gt
                del self.lq, self.output
                if save_img:
                    save_img_path = self._save_path(img_name, dataset_name, current_iter)
                    imwrite(sr_img, save_img_path)
                    stem = osp.splitext(save_img_path)[0]
                    for k, overlay in enumerate(semantic_overlays(sr_img, [m[0] for m in maps])):
                        imwrite(overlay, f'{stem}_semantic_unit{k + 1}.png')
                if with_metrics:
                    values = {name: float(calculate_metric(metric_data, opt_))
                              for name, opt_ in val_opt['metrics'].items()}
                    for name, value in values.items():
                        self.metric_results[name] += value
                    per_image.append((img_name, values))
                if pbar is not None:
                    pbar.update(1)
                    pbar.set_description(f'Test {img_name}')
        finally:
            if pbar is not None:
                pbar.close()
            self.get_bare_model(self.net_g).train(net_training)

        if with_metrics:
            for metric in self.metric_results.keys():
                self.metric_results[metric] /= (idx + 1)
                self._update_best_metric_result(dataset_name, metric, self.metric_results[metric], current_iter)
            self._log_validation_metric_values(current_iter, dataset_name, tb_logger)
            if not self.opt['is_train'] and per_image:
                self._write_per_class(dataloader.dataset.opt, dataset_name, per_image)

    def _write_per_class(self, dataset_opt, dataset_name, per_image):
        """Test runs: per-class PSNR/SSIM as CSV + Markdown next to BasicSR's test log."""
        from segsr_basicsr.utils.per_class import find_split_classes, write_per_class
        classes = find_split_classes(dataset_opt.get('dataroot_gt') or dataset_opt.get('dataroot_lq'))
        out_dir = self.opt['path'].get('log') or self.opt['path'].get('results_root')
        paths = write_per_class(per_image, classes, out_dir, dataset_name)
        source = 'split lists' if classes else 'file names'
        get_root_logger().info(f'Per-class metrics of {dataset_name} (classes from {source}): '
                               f'{paths[0]} and {paths[1]}')

    def _save_path(self, img_name, dataset_name, current_iter):
        """Same file names as BasicSR's SRModel."""
        if self.opt['is_train']:
            return osp.join(self.opt['path']['visualization'], img_name, f'{img_name}_{current_iter}.png')
        suffix = self.opt['val'].get('suffix') or self.opt['name']
        return osp.join(self.opt['path']['visualization'], dataset_name, f'{img_name}_{suffix}.png')


__all__ = ['SeGSRModel', 'forward_padded', 'is_guidance_clip_param', 'parse_amp', 'autocast', 'parse_tf32',
           'set_tf32']
