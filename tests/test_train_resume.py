"""``python -m segsr_basicsr.train`` / ``segsr_basicsr.test`` through BasicSR's real pipelines, on CPU, with resume."""
from pathlib import Path

import torch

from train_opts import exp_logs, losses, run_train, train_opt, write_opt, write_pairs


def test_train_stop_auto_resume_on_cpu_then_test(tmp_path):
    write_pairs(tmp_path / 'data', n=4)
    opt = train_opt(tmp_path / 'data', name='resume_me', total_iter=4, save_freq=2, val_freq=4)
    opt_path = write_opt(tmp_path / 'train.yml', opt)

    first = run_train(tmp_path, opt_path)
    exp = tmp_path / 'experiments' / 'resume_me'
    assert sorted(p.name for p in (exp / 'training_states').iterdir()) == ['2.state', '4.state']
    assert (exp / 'models' / 'net_g_latest.pth').is_file()
    assert not (Path.cwd() / 'experiments' / 'resume_me').exists()  # written under cwd=tmp_path, not the repo
    assert 'Disable distributed' in first.stdout

    # a longer schedule, resumed on a CPU-only process (basicsr itself calls torch.cuda here)
    second = run_train(tmp_path, opt_path, '--auto_resume', '--force_yml', 'train:total_iter=8')
    log = exp_logs(tmp_path, 'resume_me')
    assert 'Resuming training from epoch: 1, iter: 4.' in log
    assert sorted(losses(log)) == list(range(1, 9))  # iterations 5..8 trained once each, none repeated
    assert sorted(p.name for p in (exp / 'training_states').iterdir()) == ['2.state', '4.state', '6.state', '8.state']
    assert {p.name for p in (exp / 'models').iterdir()} == {'net_g_2.pth', 'net_g_4.pth', 'net_g_6.pth', 'net_g_8.pth',
                                                            'net_g_best.pth', 'net_g_latest.pth'}  # validation on
    state = torch.load(exp / 'training_states' / '8.state', weights_only=True)
    assert state['iter'] == 8 and len(state['optimizers']) == 1 and 'rng_states' in state
    saved = torch.load(exp / 'models' / 'net_g_8.pth', weights_only=True)
    assert saved.keys() == {'params', 'params_ema', 'segsr_network'}  # + network_g (self-describing)
    assert 'Resume' in second.stdout + log

    # the test entry point on the trained weights: results/ under the current directory
    test_opt = dict(name='resume_me_test', model_type=opt['model_type'], scale=4, num_gpu='auto', manual_seed=0,
                    datasets=dict(test_1=dict(opt['datasets']['val'], name='tiny_test')),
                    network_g=opt['network_g'],
                    path=dict(pretrain_network_g=str(exp / 'models' / 'net_g_latest.pth'), param_key_g='params_ema',
                              strict_load_g=True),
                    val=dict(save_img=True, suffix=None, metrics=opt['val']['metrics']))
    test_path = write_opt(tmp_path / 'test.yml', test_opt)
    run_train(tmp_path, test_path, module='segsr_basicsr.test')
    results = tmp_path / 'results' / 'resume_me_test'
    log = ''.join(p.read_text() for p in results.glob('test_*.log'))
    assert 'tiny_test' in log and '# psnr:' in log
    assert len(list((results / 'visualization' / 'tiny_test').glob('*.png'))) == 4
