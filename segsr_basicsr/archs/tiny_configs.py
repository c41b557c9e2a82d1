"""Tiny network configs shared by the tests and the benchmarks: seconds on CPU, no downloads.

They are real SeGSR_HAT configurations (shifted windows, both attention kinds, padding),
only narrow and shallow, so a test or a benchmark exercises the code paths a user runs.
"""

#: a 2-group HAT small enough for CPU tests (window 4, so LR sizes need padding)
TINY_HAT = dict(
    upscale=4, in_chans=3, img_size=16, window_size=4, compress_ratio=2, squeeze_factor=4, conv_scale=0.01,
    overlap_ratio=0.5, img_range=1., depths=[1, 1], embed_dim=16, num_heads=[2, 2], mlp_ratio=2,
    upsampler='pixelshuffle', resi_connection='1conv')

#: guidance on a 2-layer, 64-wide open_clip ViT with random weights (shipped config)
TINY_GUIDANCE = dict(clip_model='SeGSR-Tiny-ViT', clip_pretrained=None, lora_rank=4, lora_alpha=4)

#: a 2-unit EDSR adapter (BasicSR's EDSR inside): the cheapest guided-capable backbone, for I/O-heavy tests
TINY_EDSR = dict(type='SeGSR_EDSR', num_in_ch=3, num_out_ch=3, num_feat=8, num_block=2, num_units=2, upscale=4)
