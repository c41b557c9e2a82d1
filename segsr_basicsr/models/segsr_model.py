"""SeGSRModel: BasicSR's SRModel plus what SeG-SR training and large-scene testing need.

Over :class:`basicsr.models.sr_model.SRModel` it adds: inference through the one engine
(``val.tile``, ``val.self_ensemble``); semantic heat maps with ``val.save_img``; EMA over trainable
parameters and buffers only (frozen CLIP stays as loaded); a learning rate for LoRA/CLIP parameters
(``train.guidance_lr_mult``); gradient clipping; mixed precision (``train.amp``); TF32 on CUDA; a hard
stop on a non-finite loss; a stop on a signal that saves first; per-class tables and results.json.

On CUDA a training step does not wait for the GPU (no host sync): inputs are copied non-blocking,
the EMA is a fused ``torch._foreach_*`` update, losses become floats only when BasicSR logs them,
and the non-finite flag is read only on steps that log, save or validate (``train.finite_check_freq``).
"""
from collections import OrderedDict
from os import path as osp

import torch
from basicsr.metrics import calculate_metric
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.registry import MODEL_REGISTRY
from tqdm import tqdm

from segsr_basicsr.errors import OptionError
from segsr_basicsr.models.checkpoints import CheckpointsMixin, warn_if_disk_is_short
from segsr_basicsr.models.nonfinite import NonFiniteRecord, raise_if_nonfinite
from segsr_basicsr.utils.dist import dist_ready
from segsr_basicsr.training.stop import STOP, STOP_EXIT_CODE
from segsr_basicsr.inference.engine import Engine, autocast
from segsr_basicsr.options import (parse_amp, parse_finite_check_freq, parse_grad_clip,
                                         parse_guidance_lr_mult, parse_tf32, tile_spec)
from segsr_basicsr.registry import register


def set_tf32(enabled: bool) -> None:
    """TF32 for float32 CUDA matmuls and cuDNN convolutions, process-wide (PyTorch's defaults: off / on).

    TF32 keeps fp32's range with a 10-bit mantissa (as bf16 autocast, but for fp32 training).
    """
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def is_guidance_clip_param(net, name: str) -> bool:
    """True for parameters of the CLIP tower (LoRA adapters, or the whole tower when tuned)."""
    guidance = getattr(net, 'guidance', None)
    if guidance is not None and hasattr(guidance, 'is_clip_parameter'):
        return name.startswith('guidance.') and guidance.is_clip_parameter(name[len('guidance.'):])
    return 'lora' in name.lower() or name.startswith('guidance.clip')


@register(MODEL_REGISTRY)
class SeGSRModel(CheckpointsMixin, SRModel):
    """SRModel for SeG-SR networks (any GuidedBackbone, or any BasicSR arch)."""

    def __init__(self, opt):
        val_opt = opt.get('val') or {}  # checked by segsr_basicsr.options.validate_options before the run
        self.val_tile = tile_spec(val_opt.get('tile'))
        self.val_amp = parse_amp(val_opt.get('amp'), 'val.amp')
        self.self_ensemble = val_opt.get('self_ensemble', False)
        if not isinstance(self.self_ensemble, bool):
            raise OptionError(f'val.self_ensemble must be true or false, got {self.self_ensemble!r}')
        super().__init__(opt)

    # ----------------------------------------------------------------- processes and checkpoints
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
        self.grad_clip = parse_grad_clip(train_opt.get('grad_clip'))
        self.tf32 = parse_tf32(train_opt.get('tf32'), self.device.type)
        if self.device.type == 'cuda':
            set_tf32(self.tf32)
            get_root_logger().info(f'TF32 matmuls and convolutions: {"on" if self.tf32 else "off"} (train.tf32).')
        elif train_opt.get('tf32'):
            get_root_logger().info(f'train.tf32 has no effect on {self.device.type}.')
        self.finite_check_freq = parse_finite_check_freq(train_opt.get('finite_check_freq'), self.device.type,
                                                         (self.opt.get('logger') or {}).get('print_freq'))
        self._nonfinite_loss, self._nonfinite_grad = NonFiniteRecord(), NonFiniteRecord()
        use_scaler = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler) if use_scaler else None
        if self.amp_dtype is not None:
            get_root_logger().info(f'Mixed precision: {self.amp_dtype} autocast on {self.device.type}'
                                   f'{" with GradScaler" if use_scaler else ""}.')
        super().init_training_settings()
        warn_if_disk_is_short(self)

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
        mult = parse_guidance_lr_mult(train_opt.get('guidance_lr_mult'))
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
            raise_if_nonfinite(self._nonfinite_loss, 'loss', current_iter, self.opt, self.device, self.finite_check_freq)
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
                    raise_if_nonfinite(self._nonfinite_grad, 'gradient norm', current_iter, self.opt, self.device,
                                       self.finite_check_freq)
            self.optimizer_g.step()

        self._pending_log = (list(loss_dict), self._reduce_losses(loss_dict))
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)
        self._stop_if_requested(current_iter)

    def _stop_if_requested(self, current_iter):
        """After a complete step: on a stop signal (to any rank; ranks agree by one all-reduce per step), save
        this iteration as a periodic checkpoint does, then exit with STOP_EXIT_CODE (docs/training.md)."""
        requested = STOP.requested
        if self.opt.get('dist') and dist_ready():
            import torch.distributed as dist
            flag = torch.tensor([float(requested)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            requested = bool(flag.item())
        if not requested:
            return
        self.save(STOP.epoch, current_iter)
        if self.opt.get('dist') and dist_ready():
            import torch.distributed as dist
            dist.barrier()  # rank 0 has written everything before any rank exits
        step = ' '.join(f'{k}: {v:.4e}' for k, v in self.log_dict.items())  # this step is logged nowhere else
        get_root_logger().info(
            f'Stopped by {STOP.name} at iter: {current_iter}, {step}; saved net_g_{current_iter}.pth and '
            f'{current_iter}.state in {self.opt["path"]["experiments_root"]}; continue with --auto_resume '
            f'(exit code {STOP_EXIT_CODE}).')
        raise SystemExit(STOP_EXIT_CODE)

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

    # ----------------------------------------------------------------- inference
    def _test_net(self):
        return self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g

    def infer(self, lq: torch.Tensor, record_maps: bool = False, progress=None):
        """(B,3,H,W) -> SR (B,3,H*s,W*s) [, maps] through the one engine (:mod:`segsr_basicsr.inference.engine`):
        tiled as ``val.tile`` says, self-ensembled per tile when ``val.self_ensemble`` is true. Leaves
        ``net_g`` in the mode it had (BasicSR/HAT leave it in eval mode)."""
        net = self.get_bare_model(self._test_net())
        if getattr(self, '_engine', None) is None or self._engine.net is not net:  # built once, not per image
            self._engine = Engine(net, self.device, self.val_amp, self.self_ensemble, self.opt.get('scale'))
        return self._engine.upscale_tensor(lq, self.val_tile, record_maps=record_maps, progress=progress)

    def test(self):
        self.output = self.infer(self.lq)

    # ----------------------------------------------------------------- validation
    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """SRModel's loop, plus semantic heat maps when ``save_img`` (maps are only recorded then)."""
        from segsr_basicsr.results.heatmaps import semantic_overlays

        dataset_name = dataloader.dataset.opt['name']
        val_opt = self.opt['val']
        with_metrics = val_opt.get('metrics') is not None
        use_pbar = val_opt.get('pbar', False)
        if with_metrics:
            if not hasattr(self, 'metric_results'):
                self.metric_results = {metric: 0 for metric in val_opt['metrics'].keys()}
            self._initialize_best_metric_results(dataset_name)
            self.metric_results = {metric: 0 for metric in self.metric_results}
        pbar = tqdm(total=len(dataloader), unit='image') if use_pbar else None
        metric_data = dict()
        per_image, scored = [], []  # (stem, {metric: value}), (lq path, gt path): per-class tables, results.json
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
                metric_data['lq'] = tensor2img([visuals['lq']])  # for LR-consistency (segsr_basicsr.metrics)
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
                    per_image.append((img_name, self._score(metric_data)))
                    scored.append((val_data['lq_path'][0], (val_data.get('gt_path') or [None])[0]))
                if pbar is not None:
                    pbar.update(1)
                    pbar.set_description(f'Test {img_name}')
        finally:  # the engine left the network in the mode it had
            if pbar is not None:
                pbar.close()

        if with_metrics:
            for metric in self.metric_results.keys():
                self.metric_results[metric] /= (idx + 1)
                self._update_best_metric_result(dataset_name, metric, self.metric_results[metric], current_iter)
            if self.opt['is_train']:
                self.save_best(dataset_name, current_iter)
            self._log_validation_metric_values(current_iter, dataset_name, tb_logger)
            if not self.opt['is_train'] and per_image:
                self._write_tables(dataloader.dataset.opt, dataset_name, per_image, scored)

    def _score(self, metric_data):
        """Every ``val.metrics`` entry on one SR/GT pair, with BasicSR's metric functions; added to the means."""
        values = {name: float(calculate_metric(metric_data, opt_)) for name, opt_ in self.opt['val']['metrics'].items()}
        for name, value in values.items():
            self.metric_results[name] += value
        return values

    def _write_tables(self, dataset_opt, dataset_name, per_image, scored):
        """Test runs: per-class PSNR/SSIM as CSV + Markdown, and results.json, next to BasicSR's test log."""
        from segsr_basicsr.results.per_class import find_split_classes, write_per_class
        from segsr_basicsr.results.results_json import write_results
        classes = find_split_classes(dataset_opt.get('dataroot_gt') or dataset_opt.get('dataroot_lq'))
        out_dir = self.opt['path'].get('log') or self.opt['path'].get('results_root')
        paths = write_per_class(per_image, classes, out_dir, dataset_name)
        source = 'split lists' if classes else 'file names'
        saved = {stem: self._save_path(stem, dataset_name, None) for stem, _ in per_image} \
            if self.opt['val'].get('save_img') else {}
        results = write_results(self.opt, dataset_opt, dataset_name, per_image, scored, out_dir, saved)
        get_root_logger().info(f'Per-class metrics of {dataset_name} (classes from {source}): '
                               f'{paths[0]} and {paths[1]}; all numbers and their images: {results}')

    def _save_path(self, img_name, dataset_name, current_iter):
        """Same file names as BasicSR's SRModel."""
        if self.opt['is_train']:
            return osp.join(self.opt['path']['visualization'], img_name, f'{img_name}_{current_iter}.png')
        suffix = self.opt['val'].get('suffix') or self.opt['name']
        return osp.join(self.opt['path']['visualization'], dataset_name, f'{img_name}_{suffix}.png')


__all__ = ['SeGSRModel', 'is_guidance_clip_param', 'set_tf32']
