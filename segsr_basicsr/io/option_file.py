"""Option files as data: safe YAML (no Python object tags), ``--force_yml`` without eval, HAT's spellings.

basicsr parses option files with ``yaml.Loader`` (which runs ``!!python/object/apply`` tags) and
applies ``--force_yml key=value`` through ``exec``; our entry points route both through here.
What the keys mean and which values are allowed is :mod:`segsr_basicsr.options`' job.
"""
import difflib
import os
import re
from collections import OrderedDict

import yaml

from segsr_basicsr.errors import OptionError

__all__ = ['SafeOrderedLoader', 'load_yaml', 'parse_override_value', 'parse_override', 'apply_overrides',
           'suggest', 'load_option_file', 'apply_aliases', 'unknown_top_level_keys', 'KNOWN_TOP_LEVEL_KEYS']

_KEY = re.compile(r'^[A-Za-z0-9_.\-]+$')


def suggest(key, candidates) -> str:
    """`` (did you mean 'x'?)`` for the candidate closest to ``key``, or ''."""
    names = [str(c) for c in candidates]
    same_case = [n for n in names if n.lower() == str(key).lower()]
    close = same_case or difflib.get_close_matches(str(key), names, n=1)
    return f' (did you mean {close[0]!r}?)' if close else ''


class SafeOrderedLoader(getattr(yaml, 'CSafeLoader', yaml.SafeLoader)):
    """yaml.SafeLoader (standard tags only, e.g. ``!!float``) that keeps mapping order like basicsr's loader."""


def _construct_ordered(loader, node):
    loader.flatten_mapping(node)
    return OrderedDict(loader.construct_pairs(node))


SafeOrderedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_ordered)


def load_yaml(path):
    """Parse ``path`` safely; a Python tag or a syntax error raises OptionError naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        hint = ' (it is a folder)' if os.path.isdir(path) else ''
        raise OptionError(f'Option file not found: {path}{hint}. Pass an existing YAML file with -opt, '
                          'e.g. -opt options/train_SeGSR_HAT_x4.yml.')
    with open(path, 'r', encoding='utf-8') as f:
        try:
            data = yaml.load(f, Loader=SafeOrderedLoader)
        except yaml.constructor.ConstructorError as e:
            raise OptionError(f'Refusing option file {path}: {_one_line(e.problem)} ({_mark(e)}). Option files may '
                              'only contain plain YAML values; Python object tags (!!python/...) are never '
                              'executed. Remove the tag.') from None
        except yaml.YAMLError as e:
            raise OptionError(f'Option file {path} is not valid YAML ({_mark(e)}): '
                              f'{_one_line(getattr(e, "problem", None) or e)}') from None
        except UnicodeDecodeError as e:
            raise OptionError(f'Option file {path} is not UTF-8 text (byte {e.start}): is it an option file? Pass '
                              'the YAML file with -opt.') from None
    if not isinstance(data, dict):
        raise OptionError(f'Option file {path} must be a YAML mapping (key: value lines), '
                          f'got {type(data).__name__}.')
    return data


def _one_line(text):
    return ' '.join(str(text).split())


def _mark(err):
    mark = getattr(err, 'problem_mark', None)
    return f'line {mark.line + 1}, column {mark.column + 1}' if mark is not None else 'unknown position'


def parse_override_value(text):
    """Same value rules as basicsr's ``_postprocess_yml_value``, but lists are parsed as YAML, never eval'ed."""
    low = text.lower()
    if text == '~' or low == 'none':
        return None
    if low in ('true', 'false'):
        return low == 'true'
    if text.startswith('!!float'):
        try:
            return float(text[len('!!float'):])
        except ValueError:
            raise OptionError(f'--force_yml value {text!r} is not a float.') from None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.startswith('['):
        try:
            value = yaml.load(text, Loader=SafeOrderedLoader)
        except yaml.YAMLError as e:
            raise OptionError(f'--force_yml list value {text!r} is not a valid YAML list: '
                              f'{_one_line(getattr(e, "problem", None) or e)}') from None
        if not isinstance(value, list):
            raise OptionError(f'--force_yml value {text!r} should be a list like [1, 2].')
        return value
    return text


def parse_override(entry):
    """``'train:optim_g:lr=2e-4'`` -> (['train', 'optim_g', 'lr'], 0.0002)."""
    if entry.count('=') < 1:
        raise OptionError(f'--force_yml entry {entry!r} has no "=": write section:key=value, '
                          'e.g. train:total_iter=1000.')
    keys, value = entry.split('=', 1)
    keys = [k.strip() for k in keys.strip().split(':')]
    if not all(keys):
        raise OptionError(f'--force_yml entry {entry!r} has an empty key: write section:key=value.')
    bad = [k for k in keys if not _KEY.match(k)]
    if bad:
        raise OptionError(f'--force_yml entry {entry!r}: {bad[0]!r} is not an option key (letters, digits, _ . -).')
    return keys, parse_override_value(value.strip())


def apply_overrides(opt, entries, source='the option file'):
    """Set each ``a:b:c=value`` in ``opt``; every parent key must exist (like basicsr), the leaf may be new."""
    for entry in entries or []:
        keys, value = parse_override(entry)
        node = opt
        for depth, key in enumerate(keys[:-1]):
            if isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
                continue
            if not isinstance(node, dict) or key not in node:
                where = ':'.join(keys[:depth + 1])
                raise OptionError(f'--force_yml {entry!r}: key {where!r} does not exist in {source}'
                                  f'{suggest(key, node if isinstance(node, dict) else ())}. Overrides can only change existing sections.')
            node = node[key]
        leaf = keys[-1]
        if isinstance(node, list) and leaf.isdigit() and int(leaf) < len(node):
            node[int(leaf)] = value
        elif isinstance(node, dict):
            node[leaf] = value
        else:
            raise OptionError(f'--force_yml {entry!r}: {":".join(keys[:-1])!r} in {source} is not a section.')
    return opt


def load_option_file(path, overrides=None):
    """Safe-load ``path``, apply ``--force_yml`` entries and the aliases (:func:`apply_aliases`)."""
    return apply_aliases(apply_overrides(load_yaml(path), overrides, source=os.fspath(path)), path)


#: top-level keys BasicSR (train/test, SRModel, Real-ESRGAN's degradation settings) or this package reads;
#: ``network_*`` sections are recognised by their prefix
KNOWN_TOP_LEVEL_KEYS = (
    'name', 'model_type', 'scale', 'num_gpu', 'manual_seed', 'is_train', 'dist', 'rank', 'world_size',
    'auto_resume', 'datasets', 'path', 'train', 'val', 'logger', 'dist_params', 'find_unused_parameters',
    'tile', 'root_path', 'resume_from', 'num_threads', 'cpu_kernels',
    # Real-ESRGAN / BasicSR RealESRGAN models keep their degradation settings at the top level
    'high_order_degradation', 'high_order_degradation_options', 'gt_usm', 'queue_size', 'l1_gt_usm',
    'percep_gt_usm', 'gan_gt_usm', 'gt_size', 'resize_prob', 'resize_range', 'gaussian_noise_prob', 'noise_range',
    'poisson_scale_range', 'gray_noise_prob', 'jpeg_range', 'second_blur_prob', 'resize_prob2', 'resize_range2',
    'gaussian_noise_prob2', 'noise_range2', 'poisson_scale_range2', 'gray_noise_prob2', 'jpeg_range2')


def unknown_top_level_keys(opt):
    """One message per top-level key that nothing reads, naming the nearest known key when one is close.

    A warning, not an error: BasicSR itself ignores unknown keys, and users keep their own keys in
    option files (notes, sweep ids); a typo (``vall:``) is still pointed out before the run starts.
    """
    messages = []
    for key in opt:
        key = str(key)
        if key in KNOWN_TOP_LEVEL_KEYS or key.startswith('network_'):
            continue
        close = difflib.get_close_matches(key, KNOWN_TOP_LEVEL_KEYS + ('network_g', 'network_d'), n=1)
        hint = f'; did you mean {close[0]!r}?' if close else ' (ignored).'
        messages.append(f'unknown top-level key {key!r}{hint}')
    return messages


def apply_aliases(opt, path='the option file'):
    """The spellings BasicSR/HAT users bring, made ours, and BasicSR's silent requirements given defaults:
    HAT's top-level ``tile`` becomes ``val.tile`` (:func:`_hat_tile`), and ``val.save_img`` defaults to
    false (BasicSR's test pipeline reads ``opt['val']['save_img']`` and fails with a KeyError without it)."""
    if not isinstance(opt, dict):
        return opt
    if isinstance(opt.get('val'), dict):
        opt['val'].setdefault('save_img', False)
    if opt.get('tile') is not None:
        _hat_tile(opt, path)
    return opt


def _hat_tile(opt, path):
    """Accept HAT's top-level ``tile: {tile_size, tile_pad}`` as ``val.tile``.

    HAT cuts tiles of ``tile_size`` and pads each by ``tile_pad`` on every side, so the network sees
    ``tile_size + 2 * tile_pad`` pixels and neighbours share ``2 * tile_pad``: that is
    ``val.tile: {size: tile_size + 2 * tile_pad, overlap: 2 * tile_pad}`` in our tiler (which blends the
    shared strip instead of cropping it). ``tile`` stays in ``opt`` so HAT's own model still finds it.
    """
    tile = opt['tile']
    if not isinstance(tile, dict) or 'tile_size' not in tile or set(tile) - {'tile_size', 'tile_pad'}:
        raise OptionError(f'{path}: top-level tile must look like HAT\'s {{tile_size: 512, tile_pad: 32}}, '
                          f'got {dict(tile) if isinstance(tile, dict) else tile!r}; '
                          'or use val: {tile: {size: 576, overlap: 64}}.')
    size, pad = tile['tile_size'], tile.get('tile_pad', 0)
    for name, value, low in (('tile_size', size, 1), ('tile_pad', pad, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise OptionError(f'{path}: tile:{name} must be an integer >= {low}, got {value!r}.')
    val = opt.get('val')
    if not isinstance(val, dict):
        return  # no validation section: nothing tiles (validate_options asks for val where it is needed)
    if val.get('tile') is not None:
        raise OptionError(f'{path}: both tile (HAT form) and val:tile are set; keep one of them.')
    val['tile'] = {'size': size + 2 * pad, 'overlap': 2 * pad}
