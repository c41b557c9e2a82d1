"""Train with BasicSR's own pipeline: ``python -m segsr_basicsr.train -opt X.yml [--auto_resume] [--debug]
[--launcher pytorch] [--force_yml a:b=v ...]``; multi-process: ``torchrun --nproc_per_node=N -m segsr_basicsr.train
... --launcher pytorch``. Outputs go to ./experiments and ./tb_logger."""
import segsr_basicsr  # noqa: F401  (compat layer + registration)


def main(argv=None):
    from basicsr.train import train_pipeline

    from segsr_basicsr.training.pipeline import run
    run(train_pipeline, is_train=True, argv=argv, prog='segsr-train')


if __name__ == '__main__':
    main()
