"""Train the bundled face generator: ``python scripts/train_generator.py [options]``.

The same as ``pulse-ray train``; see ``pulse_ray/train/loop.py`` for the recipe and
``MODEL_CARD.md`` for how the shipped generator was made.
"""

import sys

from pulse_ray.train.loop import main

if __name__ == "__main__":
    sys.exit(main())
