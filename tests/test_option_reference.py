"""One option reference: every key the option contract reads is documented in docs/configuration.md.

The keys are read off the contract's own code (``opt.get('key')``, ``_require(opt, 'key', ...)``, the
allowed-key tuples) and off the guidance defaults, so a key added to the validator without a line in the
reference fails here.
"""
import ast
import re
from pathlib import Path

from segsr_basicsr.archs.guidance import GUIDANCE_DEFAULTS
from segsr_basicsr.options import contract

REPO = Path(__file__).resolve().parents[1]
READERS = {'get': 0, '_require': 1, '_positive_int': 1, '_flag': 1}


def keys_read_by_the_contract() -> set:
    folder = Path(contract.__file__).parent  # the contract and its section modules
    trees = [ast.parse(f.read_text()) for f in sorted(folder.glob('*.py')) if f.name != 'values.py']
    keys = set()
    for node in (n for tree in trees for n in ast.walk(tree)):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, 'id', None)
            pos = READERS.get(name)
            if pos is not None and len(node.args) > pos and isinstance(node.args[pos], ast.Constant) \
                    and isinstance(node.args[pos].value, str):
                keys.add(node.args[pos].value)
        if isinstance(node, (ast.For, ast.Assign)):  # for key in ('a', 'b'): _flag(...) and KEYS = (...)
            seq = node.iter if isinstance(node, ast.For) else node.value
            if isinstance(seq, ast.Tuple) and all(isinstance(e, ast.Constant) and isinstance(e.value, str)
                                                  for e in seq.elts):
                keys |= {e.value for e in seq.elts}
    return keys


def documented_keys() -> set:
    text = (REPO / 'docs' / 'configuration.md').read_text()
    section = text[text.index('## Option reference'):]
    return set(re.findall(r'`([a-z_0-9]+)`', section)) | set(re.findall(r'^\s*([a-z_]+):', text, re.M))


def test_every_key_the_contract_reads_is_in_the_option_reference():
    read = keys_read_by_the_contract()
    assert {'tile', 'self_ensemble', 'stop_signals', 'keep_checkpoints'} <= read  # the walk finds keys
    missing = sorted(read - documented_keys())
    assert not missing, f'read by options/contract.py, missing from docs/configuration.md: {missing}'


def test_every_guidance_key_is_in_the_option_reference():
    missing = sorted(set(GUIDANCE_DEFAULTS) - documented_keys())
    assert not missing, f'guidance keys missing from docs/configuration.md: {missing}'
