"""SeGSRModel: BasicSR's SRModel plus what SeG-SR training and large-scene testing need.

Over :class:`basicsr.models.sr_model.SRModel` it adds: padding to the net's
``size_multiple`` and optional tiled inference (``val.tile``); train mode restored
after validation; semantic heat maps written with ``val.save_img``; EMA over
trainable parameters and buffers only (frozen CLIP stays as loaded); a separate
learning rate for LoRA/CLIP parameters (``train.guidance_lr_mult``); gradient
clipping (``train.grad_clip``); mixed precision (``train.amp: bf16|fp16``); and a
hard stop on a non-finite loss before the optimizer step.
"""
import contextlib
from collections import OrderedDict
from os import path as osp

import torch
from basicsr.metrics import calculate_metric
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.registry import MODEL_REGISTRY
from tqdm import tqdm

from segsr_basicsr.archs.guided import pad_to_multiple
from segsr_basicsr.utils.tiling import parse_tile_opt, tiled_forward

AMP_DTYPES = {'bf16': torch.bfloat16, 'bfloat16': torch.bfloat16, 'fp16': torch.float16, 'float16': torch.float16}


def parse_amp(value, where: str):
    """'bf16' | 'fp16' | None/'none'/False -> torch dtype or None."""
    if value in (None, False, 'none', 'None', 'fp32', 'float32'):
        return None
    if value not in AMP_DTYPES:
        raise ValueError(f'{where}: amp must be one of bf16, fp16 or none, got {value!r}')
    return AMP_DTYPES[value]


def autocast(device: torch.device, dtype):
    """torch.autocast on ``device``'s type, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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


@MODEL_REGISTRY.register()
class SeGSRModel(SRModel):
    """SRModel for SeG-SR networks (any GuidedBackbone, or any BasicSR arch)."""

    def __init__(self, opt):
        val_opt = opt.get('val') or {}
        self.tile_size, self.tile_overlap = parse_tile_opt(val_opt.get('tile'))
        tile = val_opt.get('tile') if isinstance(val_opt.get('tile'), dict) else {}
        self.tile_batch = int(tile.get('batch', 1))
        self.tile_margin = tile.get('margin')
        self.val_amp = parse_amp(val_opt.get('amp'), 'val.amp')
        super().__init__(opt)

    def model_to_device(self, net):
        """Refuse BasicSR's DataParallel path (num_gpu > 1 without a launcher) for training guided networks: it
        splits every batch over replicas, and autocast (thread-local) does not reach them; use torchrun (DDP)."""
        num_gpu = self.opt.get('num_gpu', 0)
        if self.opt.get('is_train') and not self.opt.get('dist') and isinstance(num_gpu, int) and num_gpu > 1 \
                and getattr(net, 'guidance', None) is not None:
            raise ValueError(f'num_gpu: {num_gpu} without --launcher would wrap the guided network in DataParallel, '
                             f'which SeG-SR does not support: run torchrun --nproc_per_node={num_gpu} -m '
                             'segsr_basicsr.train -opt YOUR_OPTIONS.yml --launcher pytorch (or set num_gpu: 1)')
        return super().model_to_device(net)

    # ----------------------------------------------------------------- training setup
    def init_training_settings(self):
        train_opt = self.opt['train']
        self.amp_dtype = parse_amp(train_opt.get('amp'), 'train.amp')
        self.grad_clip = train_opt.get('grad_clip')
        if self.grad_clip is not None and not (isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0):
            raise ValueError(f'train.grad_clip must be a positive max gradient norm or ~, got {self.grad_clip!r}')
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
        CLIP anyway. Non-float buffers (indices, counters) are copied.
        """
        net_g = self.get_bare_model(self.net_g)
        ema_params = dict(self.net_g_ema.named_parameters())
        ema_buffers = dict(self.net_g_ema.named_buffers())
        with torch.no_grad():
            for k, p in net_g.named_parameters():
                if p.requires_grad:
                    ema_params[k].mul_(decay).add_(p.detach(), alpha=1 - decay)
                elif decay == 0:  # initial copy, e.g. no pretrained weights for the EMA net
                    ema_params[k].copy_(p.detach())
            for k, b in net_g.named_buffers():
                if k not in ema_buffers:
                    continue
                if b.is_floating_point():
                    ema_buffers[k].mul_(decay).add_(b.detach(), alpha=1 - decay)
                else:
                    ema_buffers[k].copy_(b)

    def setup_optimizers(self):
        """Two param groups: the SR network at ``lr``, LoRA/CLIP at ``lr * guidance_lr_mult``."""
        train_opt = self.opt['train']
        optim_opt = dict(train_opt['optim_g'])
        optim_type = optim_opt.pop('type')
        mult = optim_opt.pop('clip_lr_mult', None)
        mult = train_opt.get('guidance_lr_mult', 1.0) if mult is None else mult
        if not (isinstance(mult, (int, float)) and mult >= 0):
            raise ValueError(f'train.guidance_lr_mult must be a number >= 0, got {mult!r}')
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
            raise ValueError(f'train.optim_g.type: {optim_type!r} is not a torch.optim optimizer')
        return cls(params, lr, **kwargs)

    # ----------------------------------------------------------------- one step
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

        self._check_finite(l_total, loss_dict, current_iter)
        if self.scaler is not None:
            self.scaler.scale(l_total).backward()
            if self.grad_clip:
                self.scaler.unscale_(self.optimizer_g)
                torch.nn.utils.clip_grad_norm_(self._trainable(), self.grad_clip)
            self.scaler.step(self.optimizer_g)  # skips the step on inf/nan grads, lowers the scale
            self.scaler.update()
        else:
            l_total.backward()
            if self.grad_clip:
                norm = torch.nn.utils.clip_grad_norm_(self._trainable(), self.grad_clip)
                if not torch.isfinite(norm):
                    raise FloatingPointError(
                        f'Non-finite gradient norm ({norm.item()}) at iteration {current_iter}; training stopped '
                        'before the optimizer step, so the weights and the last saved checkpoint are intact. '
                        'Lower the learning rate, enable train.grad_clip, or use train.amp: bf16 instead of fp16.')
            self.optimizer_g.step()

        self.log_dict = self.reduce_loss_dict(loss_dict)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def _trainable(self):
        return [p for p in self.net_g.parameters() if p.requires_grad]

    def _check_finite(self, l_total, loss_dict, current_iter):
        """Raise before backward/step when the loss is NaN/inf (nothing has been modified yet).

        Under DDP all ranks agree first (one scalar all-reduce), so they stop together
        instead of the healthy ranks hanging in the gradient all-reduce.
        """
        finite = torch.isfinite(l_total.detach()).all().float()
        local = bool(finite)
        if self.opt.get('dist'):
            import torch.distributed as dist
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if bool(finite):
            return
        values = ', '.join(f'{k}={v.detach().float().mean().item():.6g}' for k, v in loss_dict.items())
        if local:
            values += f' here on rank {self.opt.get("rank", 0)}, non-finite on another rank'
        raise FloatingPointError(
            f'Non-finite loss at iteration {current_iter}: {values}. Training stopped before the optimizer '
            'step: the network was not updated and the last saved checkpoint in '
            f'{self.opt["path"].get("models", "experiments/<name>/models")} is intact (resume from it with '
            'path.resume_state). Check the data for NaNs, lower the learning rate, set train.grad_clip, or '
            'use train.amp: bf16 instead of fp16.')

    # ----------------------------------------------------------------- inference
    def _test_net(self):
        return self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g

    def infer(self, lq: torch.Tensor, record_maps: bool = False, progress=None):
        """(B,3,H,W) -> SR (B,3,H*s,W*s) [, maps]: eval + no_grad, tiled when ``val.tile`` is set.

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
                    out = tiled_forward(fn, lq, self.tile_size, self.tile_overlap, margin=self.tile_margin,
                                        multiple=getattr(net, 'size_multiple', 1), batch=self.tile_batch,
                                        device=self.device, progress=progress)
                else:
                    out = fn(lq.to(self.device))
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
                    for name, opt_ in val_opt['metrics'].items():
                        self.metric_results[name] += calculate_metric(metric_data, opt_)
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

    def _save_path(self, img_name, dataset_name, current_iter):
        """Same file names as BasicSR's SRModel."""
        if self.opt['is_train']:
            return osp.join(self.opt['path']['visualization'], img_name, f'{img_name}_{current_iter}.png')
        suffix = self.opt['val'].get('suffix') or self.opt['name']
        return osp.join(self.opt['path']['visualization'], dataset_name, f'{img_name}_{suffix}.png')


__all__ = ['SeGSRModel', 'forward_padded', 'is_guidance_clip_param', 'parse_amp', 'autocast']
