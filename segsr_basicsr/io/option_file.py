"""Option files as data: safe YAML (no Python object tags) and ``--force_yml`` without eval.

basicsr parses option files with ``yaml.Loader`` (which runs ``!!python/object/apply`` tags) and
applies ``--force_yml key=value`` through ``exec``; our entry points route both through here.
What the keys mean and which values are allowed is :mod:`segsr_basicsr.utils.options`' job.
"""
import difflib
import os
import re
from collections import OrderedDict

import yaml

from segsr_basicsr.errors import OptionError

__all__ = ['SafeOrderedLoader', 'load_yaml', 'parse_override_value', 'parse_override', 'apply_overrides',
           'suggest']

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
