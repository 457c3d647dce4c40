"""Training objectives. Importing this package registers every objective."""
from eo_jax.objectives.base import OBJECTIVES, Objective, StepOutput, TrainState, Variables

# Each module registers its objective on import.
from eo_jax.objectives import supervised  # noqa: F401,E402
from eo_jax.objectives import mae  # noqa: F401,E402
from eo_jax.objectives import dino  # noqa: F401,E402
from eo_jax.objectives import segmentation  # noqa: F401,E402
