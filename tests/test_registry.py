"""Registry names: no clash next to HAT / the official SeG-SR code, on re-import, and all ours start with SeGSR."""
import subprocess
import textwrap

from train_opts import PYTHON, env

FAKE_HAT = '''
import torch.nn as nn
from basicsr.models.sr_model import SRModel
from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY

@ARCH_REGISTRY.register()
class HAT(nn.Module):
    pass

@MODEL_REGISTRY.register()
class HATModel(SRModel):
    pass
'''

FAKE_OFFICIAL_SEGSR = '''
import torch.nn as nn
from torch.utils.data import Dataset
from basicsr.models.sr_model import SRModel
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, MODEL_REGISTRY

@ARCH_REGISTRY.register()
class SEGSR(nn.Module):
    pass

@MODEL_REGISTRY.register()
class SEGSRModel(SRModel):
    pass

@DATASET_REGISTRY.register()
class ImageNetPairedDataset(Dataset):
    pass
'''

SCRIPT = '''
import importlib, sys
import segsr_basicsr
import hat, segsr          # an installed HAT and the official SeG-SR code, registering their names
from basicsr.utils import registry as r
REGS = [r.ARCH_REGISTRY, r.MODEL_REGISTRY, r.DATASET_REGISTRY, r.LOSS_REGISTRY, r.METRIC_REGISTRY]

def ours():
    return {(reg._name, k): v for reg in REGS for k, v in reg if v.__module__.startswith('segsr_basicsr')}

before = ours()
assert ('arch', 'SeGSR_HAT') in before and ('model', 'SeGSRModel') in before, sorted(before)

# 1) importlib.reload of every registering module
for mod in list(sys.modules):
    if mod.startswith('segsr_basicsr.') and mod.endswith(('_arch', '_model', '_dataset')):
        importlib.reload(sys.modules[mod])
# 2) a fresh import of the whole package while the registries already hold everything
for mod in [m for m in list(sys.modules) if m == 'segsr_basicsr' or m.startswith('segsr_basicsr.')]:
    del sys.modules[mod]
import segsr_basicsr  # noqa
after = ours()
assert after.keys() == before.keys(), (sorted(before), sorted(after))
assert r.ARCH_REGISTRY.get('SeGSR_HAT').__module__ == 'segsr_basicsr.archs.hat_arch'
for name, module in [('HAT', 'hat'), ('SEGSR', 'segsr')]:
    assert r.ARCH_REGISTRY.get(name).__module__ == module
assert r.MODEL_REGISTRY.get('HATModel').__module__ == 'hat' and r.MODEL_REGISTRY.get('SEGSRModel').__module__ == 'segsr'
assert r.DATASET_REGISTRY.get('ImageNetPairedDataset').__module__ == 'segsr'
bad = sorted(k for (_, k) in after if not (k.startswith('SeGSR') or k.startswith('calculate_segsr_')))
assert not bad, f'registered names without the SeGSR prefix (metrics: calculate_segsr_, in BasicSR form): {bad}'

# 3) a real clash is still refused: by BasicSR's own check when someone else registers one of our names,
#    and naming both owners when one of our classes meets a name someone else took first
import torch.nn as nn
try:
    r.ARCH_REGISTRY.register(type('SeGSR_HAT', (nn.Module,), {'__module__': 'someone_else'}))
except AssertionError as e:
    assert 'already registered' in str(e), e
else:
    raise AssertionError('a clashing name was accepted')
from segsr_basicsr.registry import register
theirs = type('SeGSR_Probe', (nn.Module,), {'__module__': 'someone_else'})
r.ARCH_REGISTRY.register(theirs)
try:
    register(r.ARCH_REGISTRY)(type('SeGSR_Probe', (nn.Module,), {'__module__': 'segsr_basicsr.archs.probe'}))
except KeyError as e:
    assert 'segsr_basicsr.archs.probe' in str(e) and 'someone_else' in str(e), e
else:
    raise AssertionError('a clashing name was accepted')
print('REGISTRY-OK', len(after))
'''


def test_no_registry_clash_with_hat_official_segsr_and_reimport(tmp_path):
    (tmp_path / 'hat').mkdir()
    (tmp_path / 'hat' / '__init__.py').write_text(FAKE_HAT)
    (tmp_path / 'segsr').mkdir()
    (tmp_path / 'segsr' / '__init__.py').write_text(FAKE_OFFICIAL_SEGSR)
    proc = subprocess.run([PYTHON, '-c', textwrap.dedent(SCRIPT)], cwd=tmp_path, env=env(PYTHONPATH=tmp_path),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert 'REGISTRY-OK' in proc.stdout
