"""Registration into BasicSR's registries that survives re-imports, without patching BasicSR.

BasicSR's ``Registry.register`` refuses a name that is already taken, even by the very same
class: ``importlib.reload`` of one of our modules, or a second import of the package in the
same process, would then fail. :func:`register` replaces our own earlier definition and
still refuses a name owned by someone else, naming both owners.
"""


def _owner(obj):
    return getattr(obj, '__module__', '?'), getattr(obj, '__qualname__', '?')


def register(registry):
    """Class decorator: ``@register(ARCH_REGISTRY)`` registers the class under its ``__name__``."""

    def deco(obj):
        name = obj.__name__
        old = registry._obj_map.get(name)
        if old is None:
            registry.register(obj)
        elif _owner(old) == _owner(obj):
            registry._obj_map[name] = obj  # our own re-imported definition
        elif old is not obj:
            raise KeyError(f"An object named '{name}' is already registered in basicsr's '{registry._name}' "
                           f'registry by {_owner(old)[0]}; {_owner(obj)[0]} cannot register another one under '
                           'the same name. Rename one of them.')
        return obj

    return deco
