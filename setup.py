"""The one build step pyproject.toml cannot say: the catalog lives at the repository's top level
(model_ids.json) and the wheel carries a real copy of it as gnconvert/data/model_ids.json."""
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithCatalog(build_py):
    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "gnconvert", "data", "model_ids.json")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_ids.json"), target)


setup(cmdclass={"build_py": BuildWithCatalog})
