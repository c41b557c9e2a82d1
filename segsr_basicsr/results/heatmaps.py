"""Semantic heat maps: where each SR unit's guidance looked, overlaid on the image."""
from typing import List, Sequence

import cv2
import numpy as np
import torch


def heatmap(sem_map, size, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """One map (E, h, w) or (h, w), tensor or array -> BGR uint8 (H, W, 3) heat map at ``size`` = (H, W).

    Channels are averaged; values are scaled per map between its 1st and 99th
    percentiles (the raw maps are tau * cosine similarities, whose absolute level
    says little), so red marks where this unit's semantic embedding matched best
    within the image.
    """
    m = sem_map.detach().float().cpu().numpy() if torch.is_tensor(sem_map) else np.asarray(sem_map, np.float32)
    if m.ndim == 3:
        m = m.mean(0)
    if m.ndim != 2:
        raise ValueError(f'semantic map must be (E, h, w) or (h, w), got shape {tuple(sem_map.shape)}')
    lo, hi = (float(v) for v in np.percentile(m, (1, 99)))  # robust to a few extreme pixels
    m = np.clip((m - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(m)
    m = cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return cv2.applyColorMap(np.clip(m * 255 + 0.5, 0, 255).astype(np.uint8), colormap)


def overlay(img: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a BGR heat map onto an image (H, W, 3|1) of uint8 or uint16 -> BGR uint8."""
    if img.dtype != np.uint8:
        img = (img.astype(np.float32) / np.iinfo(img.dtype).max * 255).round().astype(np.uint8)
    if img.ndim == 2 or img.shape[2] == 1:
        img = cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2BGR)
    return cv2.addWeighted(img[..., :3], 1 - alpha, heat, alpha, 0)


def semantic_overlays(img: np.ndarray, maps: Sequence, alpha: float = 0.45) -> List[np.ndarray]:
    """Image (H, W, C) + K maps (E, h, w) -> K BGR uint8 overlays of the image's size."""
    return [overlay(img, heatmap(m, img.shape[:2]), alpha) for m in maps]
