"""Install segsr_basicsr: SeG-SR (semantic-guided remote-sensing SR) as a BasicSR plugin."""
from setuptools import find_packages, setup

with open('README.md', encoding='utf-8') as f:
    long_description = f.read()

setup(
    name='segsr_basicsr',
    version='0.1.0',
    description='SeG-SR: CLIP-guided super-resolution of remote-sensing images, as a BasicSR plugin',
    long_description=long_description,
    long_description_content_type='text/markdown',
    packages=find_packages(include=['segsr_basicsr', 'segsr_basicsr.*']),
    package_data={'segsr_basicsr': ['archs/clip_configs/*.json']},
    python_requires='>=3.9',
    install_requires=[
        # basicsr 1.4.2 is the last release; segsr_basicsr.compat makes it work on
        # torchvision >= 0.17, numpy 2 and CPU-only machines.
        'basicsr==1.4.2',
        'torch>=2.1',
        'torchvision>=0.16',
        'open_clip_torch>=2.24',
        'opencv-python',
        'lmdb',
        'numpy',
        'pyyaml',
        'tqdm',
        'setuptools',  # basicsr imports distutils, gone from Python 3.12
    ],
    extras_require={
        'test': ['pytest>=7', 'spandrel>=0.4', 'rasterio>=1.3', 'matplotlib>=3.5'],  # rasterio, matplotlib: their tests
        'geo': ['rasterio>=1.3'],
        'report': ['matplotlib>=3.5'],  # segsr-report --figure / --curves
        # segsr-export: torch.onnx's dynamo exporter needs onnx + onnxscript; the check runs onnxruntime.
        # safetensors needs no extra: open_clip_torch already depends on it.
        'export': ['onnx>=1.16', 'onnxruntime>=1.18', 'onnxscript>=0.1'],
    },
    entry_points={
        'console_scripts': [
            'segsr-train=segsr_basicsr.train:main',
            'segsr-test=segsr_basicsr.test:main',
            'segsr-infer=segsr_basicsr.infer:main',
            'segsr-report=segsr_basicsr.report:main',
            'segsr-export=segsr_basicsr.export:main',
            'segsr-launch=segsr_basicsr.launch:main',
        ],
    },
)
