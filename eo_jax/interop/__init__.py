"""Weights from elsewhere: published PyTorch models, other band sets.

* `torch_weights`: reads .pth / .safetensors state dicts and converts them
  for an eo_jax model (`torch_resnet`: torchvision ResNet-18/34/50;
  `torch_vit`: timm and DINOv2 ViTs), checking the keys both ways.
* `band_adaptation`: fits a checkpoint's input filters to the data's bands
  by centre wavelength, with a per-band report.

`config.init_from.torch_checkpoint` (eo_jax/train/init_from.py) and
`python -m eo_jax.convert` (an Orbax checkpoint that
`config.init_from.workdir` takes) are built on these. PyTorch and
safetensors are imported only when a file needs them
(`pip install 'eo_jax[interop]'`).
"""
