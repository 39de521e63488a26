"""mmfisher: Group Fisher channel pruning for the OpenMMLab 2.x stack."""
import os
import shutil

from setuptools import find_packages, setup


def _ship_configs() -> None:
    """Link (or copy) the repo's configs, tools and model index into ``mmfisher/.mim``.

    mmengine resolves ``pkg::path`` through ``<pkg>/.mim/model-index.yml`` (must exist), then
    ``<pkg>/.mim/configs/path``; links keep an editable install current, a wheel gets copies.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    mim = os.path.join(here, 'mmfisher', '.mim')
    os.makedirs(mim, exist_ok=True)
    for name in ('configs', 'tools', 'model-index.yml'):
        src, dst = os.path.join(here, name), os.path.join(mim, name)
        if os.path.islink(dst) or os.path.isfile(dst):
            os.remove(dst)
        elif os.path.isdir(dst):
            shutil.rmtree(dst)
        if not os.path.exists(src):
            continue
        is_dir = os.path.isdir(src)
        try:
            os.symlink(os.path.relpath(src, mim), dst, target_is_directory=is_dir)
        except OSError:
            (shutil.copytree if is_dir else shutil.copyfile)(src, dst)


_ship_configs()

setup(
    name='mmfisher',
    version='0.1.0',
    description='Group Fisher Pruning for MMDetection / MMPretrain (OpenMMLab 2.x)',
    packages=find_packages(exclude=('tests', 'tests.*', 'benchmarks', 'configs', 'tools')),
    include_package_data=True,
    package_data={'mmfisher': ['.mim/model-index.yml', '.mim/configs/**/*.py', '.mim/tools/*']},
    python_requires='>=3.9',
    install_requires=[],
    zip_safe=False,
)
