"""One process of a multi-process test run: train RECIPE, write its summary to PREFIX<rank>.

With --die-after-checkpoint, every process stops (as on Ctrl-C) right after the first checkpoint is written.
With --partition-all, ZeRO-3 partitions every parameter (DeepSpeed's persistence threshold 0): by default it keeps
those under 1e5 elements, all of a tiny model's, whole on every process.
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
if "--partition-all" in sys.argv:
    real_set = loop.set_accumulation

    def set_then_partition_all(accelerator, *args):
        real_set(accelerator, *args)
        config = accelerator.state.deepspeed_plugin.deepspeed_config
        config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    loop.set_accumulation = set_then_partition_all
try:
    summary = loop.train(load_recipe(sys.argv[1]))
except loop.TrainingInterrupted as e:
    summary = {"interrupted": str(e)}
with open(sys.argv[2] + os.environ["RANK"], "w") as out:  # one file each: the processes' stdout interleaves
    out.write(json.dumps(summary))
