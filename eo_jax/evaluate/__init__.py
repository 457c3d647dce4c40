"""Metrics and evaluators. Importing this package registers every evaluator."""
from eo_jax.evaluate.common import (EVALUATORS, EvalContext, EvalOutput,
                                    Evaluator, PredictionEvaluator,
                                    build_evaluators)

# Each module registers its evaluators on import.
from eo_jax.evaluate import classification  # noqa: F401,E402
from eo_jax.evaluate import collapse  # noqa: F401,E402
from eo_jax.evaluate import dino  # noqa: F401,E402
from eo_jax.evaluate import means  # noqa: F401,E402
from eo_jax.evaluate import probes  # noqa: F401,E402
from eo_jax.evaluate import segmentation  # noqa: F401,E402
