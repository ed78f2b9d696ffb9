"""Generates logkv/logkv_generated.py from protocol/logkv.fbs with flatc when
the package is built (pip install, pip wheel): the generated code is never
committed. LOGKV_SCHEMA names another schema file; FLATC another compiler.
"""
import os
import shutil
import subprocess
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithProtocol(build_py):
    def run(self):
        super().run()
        schema = os.environ.get("LOGKV_SCHEMA",
                                os.path.join(HERE, "..", "..", "protocol", "logkv.fbs"))
        flatc = os.environ.get("FLATC", "flatc")
        if not os.path.exists(schema):
            raise SystemExit("logkv: schema %s not found (set LOGKV_SCHEMA)" % schema)
        if shutil.which(flatc) is None:
            raise SystemExit("logkv: flatc not found (Debian: flatbuffers-compiler; or FLATC)")
        with tempfile.TemporaryDirectory() as out:
            subprocess.run([flatc, "--python", "--gen-onefile", "-o", out, schema], check=True)
            target = os.path.join(self.build_lib, "logkv")
            os.makedirs(target, exist_ok=True)
            shutil.copy(os.path.join(out, "logkv_generated.py"),
                        os.path.join(target, "logkv_generated.py"))


setup(cmdclass={"build_py": BuildWithProtocol})
