"""Run ``axolotl.cli.<command>.do_cli(CONFIG)`` from this small file: ``python axolotl_main.py train CONFIG``.

Same code path as ``python -m axolotl.cli.train CONFIG``. The difference: datasets' worker
processes (spawned while the prepared data is saved) re-import the main module, and this one
is cheap to re-import, where axolotl's CLI modules take ~15 s each on 2 cores.
"""

import importlib
import sys

if __name__ == "__main__":
    command = sys.argv.pop(1)  # preprocess | train
    importlib.import_module(f"axolotl.cli.{command}").do_cli(config=sys.argv[1])
