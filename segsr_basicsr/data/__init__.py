"""Import every `*_dataset.py` module here so its classes register into BasicSR."""
import importlib
from pathlib import Path

_modules = [
    importlib.import_module(f'{__name__}.{p.stem}') for p in sorted(Path(__file__).parent.glob('*_dataset.py'))
]
