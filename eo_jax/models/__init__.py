"""Model zoo. Importing this package registers every model."""
from eo_jax.models.registry import MODELS, build_model

# Each module registers its models on import; keep this list alphabetical.
from eo_jax.models import bagnet  # noqa: F401,E402
from eo_jax.models import lenet  # noqa: F401,E402
from eo_jax.models import resnet  # noqa: F401,E402
from eo_jax.models import segmentation  # noqa: F401,E402
from eo_jax.models import spectral_vit  # noqa: F401,E402
from eo_jax.models import vit  # noqa: F401,E402
# Segmentation decoders (eo_jax/models/decoders/), by name in DECODERS.
from eo_jax.models.decoders import DECODERS  # noqa: F401,E402
