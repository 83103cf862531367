"""Build step that ships the schema inside the package.

The one schema is the repository's schema/zerocan.capnp. A regular (non-editable) build
copies it into the built package as zerocan/zerocan.capnp, so an installed package
carries exactly the file it was built from; an editable install reads the repository's
file directly (see zerocan/_schema.py). Nothing here is a hand-kept copy.
"""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA = os.path.join(HERE, "..", "..", "schema", "zerocan.capnp")


class BuildWithSchema(build_py):
    def run(self):
        super().run()
        if self.editable_mode if hasattr(self, "editable_mode") else False:
            return
        if not os.path.isfile(SCHEMA):
            raise FileNotFoundError(f"zerocan: {SCHEMA} not found; build from the repository")
        target = os.path.join(self.build_lib, "zerocan", "zerocan.capnp")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(SCHEMA, target)


setup(cmdclass={"build_py": BuildWithSchema})
