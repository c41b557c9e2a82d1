"""Reading one key of an option section: present, of the right type, a whole number, a registered name, a
flag. Shared by the sections of the contract (:mod:`.contract`, :mod:`.datasets`); each refusal is one
:class:`OptionError` line naming the key path.
"""
import difflib

from segsr_basicsr.errors import OptionError
from segsr_basicsr.io.option_file import suggest

_TYPE_NAMES = {int: 'an integer', str: 'a string', dict: 'a section (key: value mapping)', float: 'a number'}


def _require(opt, key, types, where, path, hint=''):
    if key not in opt:
        raise OptionError(f'{path}: missing key {where + key!r}{suggest(key, opt)}.{hint}')
    value = opt[key]
    types = types if isinstance(types, tuple) else (types, )
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        names = ' or '.join(_TYPE_NAMES.get(t, t.__name__) for t in types)
        raise OptionError(f'{path}: {where + key!r} must be {names}, got {value!r}.')
    return value


def _positive_int(opt, key, where, path, minimum=1):
    """An integer count; BasicSR files often write counts as ``!!float 5e3``, which basicsr accepts too."""
    if key in opt and (isinstance(opt[key], bool) or not isinstance(opt[key], (int, float))):
        raise OptionError(f'{path}: {where + key!r} must be a whole number, got {opt[key]!r}.')
    value = _require(opt, key, (int, float), where, path)
    if isinstance(value, float) and not value.is_integer():
        raise OptionError(f'{path}: {where + key!r} must be a whole number, got {value!r}.')
    if value < minimum:
        raise OptionError(f'{path}: {where + key!r} must be >= {minimum}, got {value}.')
    return value


def _registered(registry, name, what, path, where):
    if not isinstance(name, str):
        raise OptionError(f'{path}: {where} must be the name of a registered BasicSR {what}, got {name!r}.')
    if name not in registry:
        names = sorted(k for k in registry.keys())
        close = difflib.get_close_matches(name, names, n=3)
        hint = f' Did you mean {", ".join(close)}?' if close else ''
        raise OptionError(f'{path}: {where} {name!r} is not a registered BasicSR {what}.{hint} '
                          'Check the spelling (our names start with SeGSR) and that segsr_basicsr is imported.')


# ----------------------------------------------------------------------------- value parsers
def _flag(section, key, where):
    value = section.get(key, False)
    if value is not None and not isinstance(value, bool):
        raise OptionError(f'{where}{key} must be true or false, got {value!r}.')
    return bool(value)
