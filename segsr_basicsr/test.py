"""Test with BasicSR's own pipeline: ``python -m segsr_basicsr.test -opt X.yml``; results go to ./results."""
import segsr_basicsr  # noqa: F401  (compat layer + registration)


def main(argv=None):
    from basicsr.test import test_pipeline

    from segsr_basicsr.utils.cli import run
    run(test_pipeline, is_train=False, argv=argv, prog='segsr-test')


if __name__ == '__main__':
    main()
