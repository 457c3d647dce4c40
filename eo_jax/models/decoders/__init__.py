"""Segmentation decoders, by name: `DECODERS.get(name)(num_classes=K, ...)`.

Importing this package registers every decoder. The contract a decoder
meets (how it is called, how it picks the backbone's maps by name and
stride, its errors) is in `base.py`; one file per decoder:

  'linear'         linear.py         BatchNorm + 1x1 classifier (DINOv2)
  'ms_linear'      ms_linear.py      the same on the last 4 maps (DINOv2 +ms)
  'conv'           conv.py           progressive upsampling (SETR-PUP)
  'segmenter'      segmenter.py      mask transformer (Segmenter)
  'deeplabv3plus'  deeplabv3plus.py  ASPP + low-level skip + FCN aux head
"""
from eo_jax.models.decoders.base import DECODERS, Decoder

# Each module registers its decoder on import; keep this list alphabetical.
from eo_jax.models.decoders import conv  # noqa: F401,E402
from eo_jax.models.decoders import deeplabv3plus  # noqa: F401,E402
from eo_jax.models.decoders import linear  # noqa: F401,E402
from eo_jax.models.decoders import ms_linear  # noqa: F401,E402
from eo_jax.models.decoders import segmenter  # noqa: F401,E402

__all__ = ["DECODERS", "Decoder"]
