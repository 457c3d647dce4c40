"""Hand-written PyTorch twins of published networks, for the parity tests.

Each has the real layer structure and the exact state-dict key names of the
model it stands for, at small sizes:

* `TorchvisionResNet`: torchvision's ResNet-18/34/50 ('conv1', 'bn1',
  'layer{i}.{j}.conv1/bn1/.../downsample.0/1', 'fc'), v1.5 (the stride on
  the bottleneck's 3x3 conv);
* `TimmViT`: timm's VisionTransformer ('cls_token', 'reg_token', 'pos_embed'
  with or without prefix entries (`no_embed_class`), 'patch_embed.proj',
  'blocks.i.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1/fc2,
  ls2.gamma}', 'norm', 'head'), class-token pooling;
* `DinoV2ViT`: facebookresearch/dinov2's DinoVisionTransformer ('cls_token',
  'pos_embed' (1, 1 + N, D), 'register_tokens', 'mask_token' (1, D),
  'blocks[.chunk].i.{..., mlp.fc1/fc2 or mlp.w12/w3}', 'norm'; no head),
  returning the normalised class token, registers and patch tokens.

Attention is computed explicitly (softmax of q k^T / sqrt(hd)) so that the
reference does not share a fused kernel with anything under test.
`randomize` gives every parameter and BatchNorm statistic random values,
so that no mapping error can hide behind a zero or a one.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


# ------------------------------------------------------------------ ResNet


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin: int, planes: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = None
    if stride != 1 or cin != planes:
      self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False),
                                      nn.BatchNorm2d(planes))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin: int, planes: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = None
    if stride != 1 or cin != planes * 4:
      self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False),
                                      nn.BatchNorm2d(planes * 4))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchvisionResNet(nn.Module):
  """torchvision.models.ResNet's layout with a configurable base width."""

  def __init__(self, block: str, layers, *, width: int = 64, in_chans: int = 3,
               num_classes: int = 1000):
    super().__init__()
    cls = BasicBlock if block == "basic" else Bottleneck
    self.conv1 = nn.Conv2d(in_chans, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    cin = width
    for i, n in enumerate(layers):
      planes = width * 2**i
      blocks = []
      for j in range(n):
        blocks.append(cls(cin, planes, 2 if (i > 0 and j == 0) else 1))
        cin = planes * cls.expansion
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    self.num_stages = len(layers)
    self.fc = nn.Linear(cin, num_classes)

  def pooled(self, x, stages: int | None = None):
    """The globally averaged map after `stages` stages (default all)."""
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    for i in range(stages or self.num_stages):
      x = getattr(self, f"layer{i + 1}")(x)
    return x.mean(dim=(2, 3))

  def forward(self, x):
    return self.fc(self.pooled(x))


# --------------------------------------------------------------------- ViT


class LayerScale(nn.Module):

  def __init__(self, dim: int):
    super().__init__()
    self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

  def forward(self, x):
    return x * self.gamma


class Attention(nn.Module):

  def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
    super().__init__()
    self.num_heads = num_heads
    self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, d = x.shape
    hd = d // self.num_heads
    q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, hd).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd), dim=-1)
    return self.proj((weights @ v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):

  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU()
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
  """DINOv2's SwiGLU: silu(first half of w12) * second half, then w3."""

  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.w12 = nn.Linear(dim, 2 * hidden)
    self.w3 = nn.Linear(hidden, dim)

  def forward(self, x):
    gate, value = self.w12(x).chunk(2, dim=-1)
    return self.w3(F.silu(gate) * value)


class Block(nn.Module):

  def __init__(self, dim: int, num_heads: int, hidden: int, *,
               layerscale: bool, swiglu: bool = False, qkv_bias: bool = True):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.attn = Attention(dim, num_heads, qkv_bias)
    self.ls1 = LayerScale(dim) if layerscale else nn.Identity()
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = SwiGLUFFN(dim, hidden) if swiglu else Mlp(dim, hidden)
    self.ls2 = LayerScale(dim) if layerscale else nn.Identity()

  def forward(self, x):
    x = x + self.ls1(self.attn(self.norm1(x)))
    return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):

  def __init__(self, in_chans: int, dim: int, patch: int):
    super().__init__()
    self.proj = nn.Conv2d(in_chans, dim, patch, patch)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D), row-major


class TimmViT(nn.Module):
  """timm's VisionTransformer with global_pool='token'."""

  def __init__(self, *, image: int, patch: int, dim: int, depth: int,
               num_heads: int, hidden: int, in_chans: int = 3,
               num_classes: int = 10, reg_tokens: int = 0,
               no_embed_class: bool = False, layerscale: bool = False,
               qkv_bias: bool = True):
    super().__init__()
    n = (image // patch) ** 2
    self.no_embed_class = no_embed_class
    self.patch_embed = PatchEmbed(in_chans, dim, patch)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
    self.reg_token = (nn.Parameter(torch.zeros(1, reg_tokens, dim))
                      if reg_tokens else None)
    prefix = 0 if no_embed_class else 1 + reg_tokens
    self.pos_embed = nn.Parameter(torch.zeros(1, prefix + n, dim))
    self.blocks = nn.Sequential(*[
        Block(dim, num_heads, hidden, layerscale=layerscale, qkv_bias=qkv_bias)
        for _ in range(depth)])
    self.norm = nn.LayerNorm(dim, eps=1e-6)
    self.head = nn.Linear(dim, num_classes)

  def forward(self, x):
    x = self.patch_embed(x)
    prefix = [self.cls_token.expand(x.shape[0], -1, -1)]
    if self.reg_token is not None:
      prefix.append(self.reg_token.expand(x.shape[0], -1, -1))
    if self.no_embed_class:
      x = torch.cat(prefix + [x + self.pos_embed], dim=1)
    else:
      x = torch.cat(prefix + [x], dim=1) + self.pos_embed
    x = self.norm(self.blocks(x))
    return self.head(x[:, 0])


class _Chunk(nn.ModuleList):

  def forward(self, x):
    for block in self:
      x = block(x)
    return x


class DinoV2ViT(nn.Module):
  """DINOv2's DinoVisionTransformer (no head); `block_chunks` as theirs."""

  def __init__(self, *, image: int, patch: int, dim: int, depth: int,
               num_heads: int, hidden: int, in_chans: int = 3,
               num_register_tokens: int = 0, layerscale: bool = True,
               swiglu: bool = False, block_chunks: int = 0):
    super().__init__()
    n = (image // patch) ** 2
    self.patch_embed = PatchEmbed(in_chans, dim, patch)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
    self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n, dim))
    self.register_tokens = (nn.Parameter(torch.zeros(1, num_register_tokens, dim))
                            if num_register_tokens else None)
    blocks = [Block(dim, num_heads, hidden, layerscale=layerscale, swiglu=swiglu)
              for _ in range(depth)]
    if block_chunks:
      size = depth // block_chunks
      # As DINOv2 does: identities pad each chunk so indices stay global.
      self.blocks = nn.ModuleList([_Chunk([nn.Identity()] * i + blocks[i:i + size])
                                   for i in range(0, depth, size)])
    else:
      self.blocks = nn.ModuleList(blocks)
    self.norm = nn.LayerNorm(dim, eps=1e-6)
    self.mask_token = nn.Parameter(torch.zeros(1, dim))
    self.num_register_tokens = num_register_tokens

  def forward_features(self, x, masks=None):
    x = self.patch_embed(x)
    if masks is not None:
      x = torch.where(masks.unsqueeze(-1), self.mask_token.unsqueeze(0), x)
    x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    x = x + self.pos_embed
    if self.register_tokens is not None:
      x = torch.cat([x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1),
                     x[:, 1:]], dim=1)
    for block in self.blocks:
      x = block(x)
    x = self.norm(x)
    r = self.num_register_tokens
    return {"x_norm_clstoken": x[:, 0], "x_norm_regtokens": x[:, 1:1 + r],
            "x_norm_patchtokens": x[:, 1 + r:]}

  def forward(self, x):
    return self.forward_features(x)["x_norm_clstoken"]


# ----------------------------------------------------------------- helpers


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
  """Every parameter and BatchNorm statistic random; eval mode."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      # Weights by their fan-in; vectors and tokens (1, n, D) of order 0.5.
      scale = (1.0 / math.sqrt(p[0].numel()) if p.ndim in (2, 4) else 0.5)
      p.copy_(torch.randn(p.shape, generator=generator) * scale)
    for m in model.modules():
      if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        m.weight.add_(1.0)  # norms near 1, so that activations do not vanish
      if isinstance(m, nn.BatchNorm2d):
        m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape,
                                               generator=generator))
        m.running_var.copy_(0.5 + torch.rand(m.running_var.shape,
                                             generator=generator))
        m.num_batches_tracked.fill_(7)
  return model.eval()
