"""The settings of ``ensemble adapt`` and their defaults, defined once.

A light module (no TensorFlow, no run): the command line shows these defaults without loading
what adapting needs, and :mod:`ensemble.serve.adapt` uses the same names.
"""

#: Fine-tuning epochs of every CNN member.
DEFAULT_EPOCHS = 4
#: The fine-tuning rate (no warm-up; cosine to 1 %).
DEFAULT_LEARNING_RATE = 3e-4
#: Base training images mixed in per lab training image, so the members do not forget.
DEFAULT_REPLAY = 2.0
#: Base ``blend`` images joining the lab's held-out part, stratified by class (a few hundred
#: reviewed cells leave a few dozen to calibrate on, too few for a miss rate of 1 %), and as
#: many base ``val`` images joining the part that watches fine-tuning and fits temperatures.
DEFAULT_CALIBRATION_REPLAY = 600
#: Shares of the lab's cells: fine-tuning, watching, and the held-out part (half refits the
#: combiners, half calibrates the referral).
LAB_FRACTIONS = {"train": 0.5, "val": 0.1, "blend": 0.4, "test": 0.0}
#: Fewest reviewed cells of a class: two to fine-tune on and one held out.
MIN_PER_CLASS = 3

# Without labels (``adapt --unlabelled``).

#: Fewest readable images of the lab for its statistics.
MIN_IMAGES = 20
#: Training images of the base run the reference colour statistics are taken from.
REFERENCE_IMAGES = 2000
#: Side of the images the colour statistics are computed at.
STATISTICS_SIZE = 96
