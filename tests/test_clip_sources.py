"""CLIP weights from every kind of source, computed with the activation they were trained with.

For each source (open_clip tag, TorchScript archive, open_clip weights in a model folder with its
open_clip_config.json, plain .pt / .safetensors, hf-hub: cache) the tower SeG-SR builds must give the
features of open_clip's own reference model with the right activation, and differ from the model with
the wrong one. Tags and hf-hub repos are faked locally (open_clip's pretrained registry, a Hugging Face
hub-cache folder): no network.
"""
import json
import logging

import open_clip
import pytest
import torch

import segsr_basicsr  # noqa: F401  (registers the archs)
from segsr_basicsr.archs.clip_tower import CLIP_CONFIG_DIR
from segsr_basicsr.archs.guidance import SemanticGuidance
from tests.test_guidance import build_from_options, guided_hat, train_steps
from tests.tiny_configs import TINY_GUIDANCE

TINY_CLIP = 'SeGSR-Tiny-ViT'
TINY_CFG = json.loads((CLIP_CONFIG_DIR / f'{TINY_CLIP}.json').read_text())


def random_clip(quick_gelu: bool, seed=0):
    """A tiny open_clip CLIP with noised random weights (every tensor away from its default init)."""
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_CLIP, pretrained=None, quick_gelu=quick_gelu)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def save_weights(model, path):
    state = model.state_dict()
    if str(path).endswith('.safetensors'):
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def write_hf_cache(root, repo, model, quick_gelu: bool, rev='0123456789abcdef0123456789abcdef01234567'):
    """The Hugging Face hub-cache layout open_clip reads offline: models--org--name/{refs/main, snapshots/REV/}."""
    folder = root / f"models--{repo.replace('/', '--')}"
    snapshot = folder / 'snapshots' / rev
    snapshot.mkdir(parents=True)
    (folder / 'refs').mkdir()
    (folder / 'refs' / 'main').write_text(rev)
    config = {'model_cfg': {**TINY_CFG, **({'quick_gelu': True} if quick_gelu else {})},
              'preprocess_cfg': {'mean': list(open_clip.OPENAI_DATASET_MEAN), 'std': list(open_clip.OPENAI_DATASET_STD)}}
    (snapshot / 'open_clip_config.json').write_text(json.dumps(config))
    save_weights(model, snapshot / 'open_clip_pytorch_model.bin')
    return snapshot


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty HF hub cache, offline (as HF_HUB_OFFLINE=1 / HF_HUB_CACHE set it)."""
    from huggingface_hub import constants
    cache = tmp_path / 'hub'
    cache.mkdir()
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    return cache


def tower(**guidance):
    """The CLIP tower as SeG-SR builds it from a guidance block (frozen: open_clip's own modules, no LoRA)."""
    return SemanticGuidance(num_units=2, upscale=4, **{**TINY_GUIDANCE, 'tune': 'frozen', **guidance}).encoder.visual


def assert_same_features(visual, reference, wrong):
    """``visual`` computes ``reference``'s features (1e-6) and not those of ``wrong`` (the other activation)."""
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours, ref, other = visual.eval()(x), reference.eval()(x), wrong.eval()(x)
    assert (ours - ref).abs().max() <= 1e-6
    assert (ref - other).abs().max() > 1e-4  # the activation matters for these weights: the check can fail


def open_clip_model(*args, quick_gelu, **kwargs):
    """open_clip's own model (its loading), with the activation forced either way."""
    return open_clip.create_model(*args, **kwargs, quick_gelu=quick_gelu)


# --- one test per source kind ----------------------------------------------------------------------

@pytest.mark.parametrize('tag_quick_gelu', [True, False])
def test_tag_uses_the_activation_of_its_pretrained_config(tmp_path, monkeypatch, tag_quick_gelu, caplog):
    path = save_weights(random_clip(tag_quick_gelu), tmp_path / 'weights.pt')
    tag = {'file': str(path), 'quick_gelu': tag_quick_gelu}  # download_pretrained returns cfg['file']
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, TINY_CLIP, {'faketag': tag})
    with caplog.at_level(logging.INFO):
        visual = tower(clip_pretrained='faketag')
    right = open_clip_model(TINY_CLIP, pretrained='faketag', quick_gelu=tag_quick_gelu)
    wrong = open_clip_model(TINY_CLIP, pretrained='faketag', quick_gelu=not tag_quick_gelu)
    assert_same_features(visual, right.visual, wrong.visual)
    act = 'QuickGELU' if tag_quick_gelu else 'GELU'
    assert f'CLIP activation {act} (auto: open_clip pretrained config of tag faketag says {act})' in caplog.text


def test_torchscript_archive_is_quickgelu(tmp_path):
    """OpenAI's .pt files are TorchScript archives of QuickGELU models; the archive's own forward is the reference."""
    model = random_clip(quick_gelu=True)
    path = tmp_path / 'ViT-tiny.pt'
    torch.jit.script(model).save(str(path))
    archive = torch.jit.load(str(path)).visual
    wrong = random_clip(quick_gelu=False)
    wrong.load_state_dict(model.state_dict())
    assert_same_features(tower(clip_pretrained=str(path)), archive, wrong.visual)


@pytest.mark.parametrize('folder_quick_gelu', [True, False])
def test_weights_in_a_model_folder_follow_its_open_clip_config(tmp_path, folder_quick_gelu, caplog):
    """e.g. the open_clip_pytorch_model.bin of a downloaded HF repo, passed as a file: its folder's
    open_clip_config.json says the activation. Reference: open_clip loading the folder itself (local-dir:)."""
    snapshot = write_hf_cache(tmp_path, 'org/folder', random_clip(folder_quick_gelu), folder_quick_gelu)
    with caplog.at_level(logging.INFO):
        visual = tower(clip_pretrained=str(snapshot / 'open_clip_pytorch_model.bin'))
    right = open_clip.create_model(f'local-dir:{snapshot}')
    wrong = open_clip_model(f'local-dir:{snapshot}', quick_gelu=not folder_quick_gelu)
    assert_same_features(visual, right.visual, wrong.visual)
    assert f"open_clip_config.json says {'QuickGELU' if folder_quick_gelu else 'GELU'}" in caplog.text


@pytest.mark.parametrize('suffix', ['.pt', '.safetensors'])
def test_plain_file_without_evidence_is_gelu_says_so_and_can_be_overridden(tmp_path, suffix, caplog):
    path = str(save_weights(random_clip(False), tmp_path / f'weights{suffix}'))
    with caplog.at_level(logging.INFO):
        visual = tower(clip_pretrained=path)
    assert 'no evidence of the activation' in caplog.text and 'guidance.quick_gelu: true/false' in caplog.text
    gelu = open_clip_model(TINY_CLIP, pretrained=path, quick_gelu=False).visual
    quick = open_clip_model(TINY_CLIP, pretrained=path, quick_gelu=True).visual
    assert_same_features(visual, gelu, quick)
    assert_same_features(tower(clip_pretrained=path, quick_gelu=True), quick, gelu)  # e.g. an OpenAI-derived file


@pytest.mark.parametrize('repo_quick_gelu', [True, False])
def test_hf_hub_loads_offline_from_the_cache(hf_cache, repo_quick_gelu, caplog):
    write_hf_cache(hf_cache, 'someorg/tiny-rs-clip', random_clip(repo_quick_gelu), repo_quick_gelu)
    with caplog.at_level(logging.INFO):
        visual = tower(clip_model='hf-hub:someorg/tiny-rs-clip')
    right = open_clip.create_model('hf-hub:someorg/tiny-rs-clip')  # open_clip's own hf-hub loading
    wrong = open_clip_model('hf-hub:someorg/tiny-rs-clip', quick_gelu=not repo_quick_gelu)
    assert_same_features(visual, right.visual, wrong.visual)
    assert 'open_clip_config.json of hf-hub:someorg/tiny-rs-clip says' in caplog.text


def test_quickgelu_model_name_is_quickgelu(tmp_path):
    config = tmp_path / 'SeGSR-Tiny-ViT-quickgelu.json'
    config.write_text(json.dumps({**TINY_CFG, 'quick_gelu': True}))
    path = str(save_weights(random_clip(True), tmp_path / 'weights.pt'))
    visual = tower(clip_model=str(config), clip_pretrained=path)
    assert_same_features(visual, open_clip_model(TINY_CLIP, pretrained=path, quick_gelu=True).visual,
                         open_clip_model(TINY_CLIP, pretrained=path, quick_gelu=False).visual)


def test_explicit_false_overrides_the_evidence(tmp_path):
    model = random_clip(quick_gelu=True)
    path = tmp_path / 'ViT-tiny.pt'
    torch.jit.script(model).save(str(path))
    gelu = random_clip(quick_gelu=False)
    gelu.load_state_dict(model.state_dict())
    assert_same_features(tower(clip_pretrained=str(path), quick_gelu=False), gelu.visual, model.visual)


# --- hf-hub: errors and checkpoints -----------------------------------------------------------------

def test_hf_hub_missing_from_cache_says_what_to_download_and_where(hf_cache):
    with pytest.raises(RuntimeError) as err:
        tower(clip_model='hf-hub:someorg/not-downloaded')
    message = str(err.value)
    assert '\n' not in message
    assert f'not in the Hugging Face cache {hf_cache}' in message
    assert 'huggingface-cli download someorg/not-downloaded' in message
    assert 'models--someorg--not-downloaded' in message and 'HF_HUB_OFFLINE=1' in message


def test_hf_hub_takes_no_clip_pretrained(hf_cache):
    with pytest.raises(ValueError, match='clip_pretrained must be null with clip_model: hf-hub:'):
        tower(clip_model='hf-hub:someorg/x', clip_pretrained='openai')
    with pytest.raises(ValueError, match='must be hf-hub:org/name'):
        tower(clip_model='hf-hub:just-a-name')


def test_hf_hub_checkpoint_has_the_same_digest_check_as_files(hf_cache, tmp_path):
    """Frozen hf-hub weights are not saved; a rebuild from the cache restores them; other weights are refused."""
    write_hf_cache(hf_cache, 'someorg/a', random_clip(True, seed=1), True)
    options = {**TINY_GUIDANCE, 'clip_model': 'hf-hub:someorg/a'}
    net = train_steps(build_from_options(options))
    state = net.state_dict()
    assert not any(k.startswith('guidance.encoder.visual.') and '.lora_' not in k for k in state)
    rebuilt = build_from_options(options)
    rebuilt.load_state_dict(state)
    x = torch.rand(1, 3, 8, 12)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), net(x))
    write_hf_cache(hf_cache, 'someorg/b', random_clip(True, seed=2), True)  # same config, other weights
    with pytest.raises(RuntimeError, match='does not match this network.s CLIP source'):
        build_from_options({**options, 'clip_model': 'hf-hub:someorg/b'}).load_state_dict(state)
    with pytest.raises(RuntimeError, match='CLIP source'):  # same weights, other activation
        build_from_options({**options, 'quick_gelu': False}).load_state_dict(state)


@pytest.mark.parametrize('bad', ['yes', 'true', 1, None])
def test_bad_quick_gelu_value(bad):
    with pytest.raises(ValueError, match='guidance.quick_gelu must be auto, true or false'):
        guided_hat(quick_gelu=bad)
