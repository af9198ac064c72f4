"""One process of a multi-process test run: train RECIPE, write its summary to PREFIX<rank>.

With --die-after-checkpoint, every process stops (as on Ctrl-C) right after the first checkpoint is written.
"""

import json
import os
import sys

from tenfold.recipe import load_recipe
from tenfold.train import loop

if "--die-after-checkpoint" in sys.argv:
    real_save = loop.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt
    loop.save_checkpoint = save_then_die
try:
    summary = loop.train(load_recipe(sys.argv[1]))
except loop.TrainingInterrupted as e:
    summary = {"interrupted": str(e)}
with open(sys.argv[2] + os.environ["RANK"], "w") as out:  # one file each: the processes' stdout interleaves
    out.write(json.dumps(summary))
