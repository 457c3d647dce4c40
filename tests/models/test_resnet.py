"""Tests for eo_jax.models.resnet (and the heads it uses)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from eo_jax.data import bands as bands_lib
from eo_jax.models import MODELS, build_model, resnet


@pytest.fixture(autouse=True)
def _quick_rng_compile():
  # XLA CPU compiles jax 0.10's default (partitionable) threefry several
  # times slower; which random stream initialises the weights is irrelevant
  # to these tests.
  with jax.threefry_partitionable(False):
    yield


def _bands(n):
  return bands_lib.RGB if n == 3 else bands_lib.SENTINEL2[:n]


def _shapes(model, image_shape, **kwargs):
  """Variables and outputs as shapes only (nothing is computed)."""
  x = jnp.zeros(image_shape)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  out = jax.eval_shape(lambda v: model.apply(v, x, **kwargs), variables)
  return variables, out


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("num_bands", [3, 4, 13])
def test_output_and_feature_shapes(num_bands):
  model = resnet.resnet18(bands=_bands(num_bands), num_classes=7, width=8)
  variables, (logits, feats) = _shapes(model, (2, 32, 32, num_bands))
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  # 7x7/2 stem + 3x3/2 pool -> 8x8, then stages halve: 8, 4, 2, 1.
  assert {k: v.shape for k, v in feats.items()} == {
      "stem": (2, 8, 8, 8), "stage_1": (2, 8, 8, 8), "stage_2": (2, 4, 4, 16),
      "stage_3": (2, 2, 2, 32), "stage_4": (2, 1, 1, 64),
      "pre_logits": (2, 64)}
  assert variables["params"]["stem_conv"]["kernel"].shape == (7, 7,
                                                               num_bands, 8)
  assert set(variables["params"]["head"]) == {"fc"}
  assert "batch_stats" in variables


def test_bottleneck_low_res_truncated_and_headless():
  model = resnet.resnet(bands=_bands(4), num_classes=0, stage_sizes=(1, 1, 1),
                        block="bottleneck", width=4, low_res_stem=True,
                        num_stages=2)
  variables, (out, feats) = _shapes(model, (2, 32, 32, 4))
  assert sorted(feats) == ["pre_logits", "stage_1", "stage_2", "stem"]
  assert feats["stem"].shape == (2, 32, 32, 4)
  assert feats["stage_1"].shape == (2, 32, 32, 16)  # 4 x expansion 4
  assert feats["stage_2"].shape == (2, 16, 16, 32)
  assert out.shape == (2, 32)
  assert "head" not in variables["params"]
  assert "stage_3_block_0" not in variables["params"]


def test_mlp_head_layout():
  model = resnet.resnet(bands=_bands(3), num_classes=5, stage_sizes=(1,),
                        width=8, head="mlp", head_hidden=12)
  variables, (logits, _) = _shapes(model, (1, 32, 32, 3))
  head = variables["params"]["head"]
  assert head["hidden"]["kernel"].shape == (8, 12)
  assert head["fc"]["kernel"].shape == (12, 5)
  assert logits.shape == (1, 5)


@pytest.mark.parametrize("name,expected", [
    ("resnet18", 11_689_512), ("resnet34", 21_797_672),
    ("resnet50", 25_557_032)])
def test_param_counts_equal_torchvision(name, expected):
  model = MODELS.get(name)(bands=_bands(3), num_classes=1000)
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros((1, 224, 224, 3)))
  assert _count(variables["params"]) == expected


def test_truncated_resnet18_is_small_enough():
  model = build_model({"name": "resnet18_truncated"}, bands=_bands(13),
                      num_classes=10)
  variables, (logits, feats) = _shapes(model, (1, 128, 128, 13))
  n = _count(variables["params"])
  assert n <= 1_500_000
  assert n == 856_778  # the number stated in the docstring
  assert feats["stage_2"].shape == (1, 16, 16, 128)
  assert "stage_3" not in feats and logits.shape == (1, 10)
  assert variables["params"]["head"]["hidden"]["kernel"].shape == (128, 1024)


def _tiny(**kwargs):
  defaults = dict(bands=_bands(3), num_classes=4, stage_sizes=(1, 1),
                  width=8, low_res_stem=True)
  defaults.update(kwargs)
  return resnet.resnet(**defaults)


def test_train_mode_updates_batch_stats_and_eval_does_not():
  model = _tiny()
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3)) * 3 + 1
  variables = jax.jit(model.init)(jax.random.key(0), x)

  @jax.jit
  def train_apply(variables, x):
    return model.apply(variables, x, train=True, mutable=["batch_stats"],
                       capture_intermediates=lambda m, _: m.name == "stem_conv")

  _, updates = train_apply(variables, x)
  before = variables["batch_stats"]["stem_bn"]
  after = updates["batch_stats"]["stem_bn"]
  assert not np.allclose(before["mean"], after["mean"])
  assert not np.allclose(before["var"], after["var"])
  # Momentum 0.9 (PyTorch's 0.1): new = 0.9 * old + 0.1 * batch statistic.
  stem = updates["intermediates"]["stem_conv"]["__call__"][0]
  np.testing.assert_allclose(after["mean"], 0.1 * stem.mean(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  # Eval mode uses the running statistics: deterministic, batch independent.
  eval_apply = jax.jit(model.apply)
  y_all, _ = eval_apply(variables, x)
  y_one, _ = eval_apply(variables, x[:1])
  np.testing.assert_allclose(y_all[:1], y_one, rtol=1e-5, atol=1e-5)


def test_zero_init_residual_starts_blocks_as_identity():
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  for zero in (True, False):
    model = _tiny(stage_sizes=(1,), zero_init_residual=zero)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    _, feats = jax.jit(model.apply)(variables, x)
    # The block's input is the ReLU'd stem; a zeroed last BN leaves
    # relu(stem + 0) = stem.
    same = np.allclose(feats["stage_1"], feats["stem"])
    assert same == zero


def test_bfloat16_compute_float32_params():
  model = _tiny(dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  variables = jax.jit(model.init)(jax.random.key(0), x)
  logits, feats = jax.jit(model.apply)(variables, x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  assert feats["stage_1"].dtype == jnp.bfloat16
  assert logits.dtype == jnp.float32 and feats["pre_logits"].dtype == (
      jnp.float32)
  ref_logits, ref = jax.jit(_tiny().apply)(variables, x)
  # bfloat16 rounds to 8 significant bits (<= 2^-8 = 0.39% per op). Over
  # the stem and two blocks the measured max errors are 0.37% (stem), 0.54%
  # (stage_2), 0.46% (pre_logits) and 0.38% (logits) of each tensor's max
  # |value|; 2% leaves ~4x margin.
  for got, want in ((logits, ref_logits), (feats["stage_2"], ref["stage_2"]),
                    (feats["pre_logits"], ref["pre_logits"])):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert np.abs(want).max() > 0.1  # a meaningful scale
    assert np.abs(got - want).max() <= 0.02 * np.abs(want).max()
    assert not np.array_equal(got, want)  # bfloat16 was really used


def test_tiny_resnet_overfits_a_batch():
  # Two basic blocks keep the compile short; the loss falls as fast as with
  # a full-depth ResNet-18 of this width.
  model = _tiny(stage_sizes=(1, 1), low_res_stem=False)
  x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
  y = jnp.arange(8) % 4
  variables = jax.jit(model.init)(jax.random.key(0), x)
  params, stats = variables["params"], variables["batch_stats"]
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, stats, opt_state):
    def loss_fn(p):
      (logits, _), upd = model.apply({"params": p, "batch_stats": stats}, x,
                                     train=True, mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, upd["batch_stats"]
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  losses = []
  for _ in range(30):
    params, stats, opt_state, loss = step(params, stats, opt_state)
    losses.append(float(loss))
  assert losses[0] > 1.0
  assert losses[-1] < 0.1 * losses[0], losses


def test_bad_inputs_fail_clearly():
  model = _tiny()
  with pytest.raises(ValueError, match="3 bands.*4 channels"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 4)))
  with pytest.raises(ValueError, match="mask"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)),
                   mask=jnp.zeros((1, 4)))
  with pytest.raises(ValueError, match="block"):
    jax.eval_shape(_tiny(block="dense").init, jax.random.key(0),
                   jnp.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match="num_stages"):
    jax.eval_shape(_tiny(num_stages=3).init, jax.random.key(0),
                   jnp.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match="head"):
    jax.eval_shape(_tiny(head="conv").init, jax.random.key(0),
                   jnp.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match="name = 'resnet'"):
    resnet.resnet18(bands=_bands(3), num_classes=2, stage_sizes=(1, 1))


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
@pytest.mark.parametrize("output_stride,strides", [
    (None, (4, 4, 8, 16, 32)), (16, (4, 4, 8, 16, 16)), (8, (4, 4, 8, 8, 8))])
def test_output_stride_sets_the_dense_map_strides(block, output_stride,
                                                  strides):
  model = resnet.resnet(bands=_bands(3), num_classes=0, block=block,
                        stage_sizes=(1, 2, 1, 2), width=4,
                        output_stride=output_stride)
  names = ("stem", "stage_1", "stage_2", "stage_3", "stage_4")
  assert model.dense_maps() == dict(zip(names, strides))
  _, (_, feats) = _shapes(model, (2, 64, 96, 3))
  expansion = 4 if block == "bottleneck" else 1
  for i, (name, stride) in enumerate(zip(names, strides)):
    channels = 4 * (2**(i - 1) * expansion if i else 1)
    assert feats[name].shape == (2, 64 // stride, 96 // stride, channels)


def test_output_stride_dilates_like_torchvision():
  # torchvision's replace_stride_with_dilation: the conv that would have
  # been strided keeps the dilation before the stage, later ones double it.
  geometry = resnet.stage_geometry(4, output_stride=8)
  assert [tuple(g) for g in geometry] == [
      (1, 1, 1, 4), (2, 1, 1, 8), (1, 1, 2, 8), (1, 2, 4, 8)]
  geometry = resnet.stage_geometry(4, output_stride=16)
  assert [g.dilation for g in geometry] == [1, 1, 1, 2]
  # A low-resolution stem reaches stride 8 at stage 4 only.
  assert [g.output_stride for g in resnet.stage_geometry(
      4, low_res_stem=True, output_stride=8)] == [1, 2, 4, 8]
  for bad in (2, 12):
    with pytest.raises(ValueError, match="output_stride"):
      resnet.stage_geometry(4, output_stride=bad)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_output_stride_keeps_every_parameter_shape(name):
  # Same parameters for every output stride, so pretrained weights load.
  shapes = []
  for output_stride in (None, 16, 8):
    model = MODELS.get(name)(bands=_bands(3), num_classes=10,
                             output_stride=output_stride)
    variables, (logits, _) = _shapes(model, (1, 64, 64, 3))
    assert logits.shape == (1, 10)
    shapes.append(jax.tree.map(lambda v: v.shape, variables))
  assert shapes[0] == shapes[1] == shapes[2]


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_dilation_keeps_every_receptive_field(block):
  # Each dilated conv samples the input pixels its strided counterpart did:
  # every layer's receptive field is unchanged, only the jump is capped.
  from eo_jax import summary  # pylint: disable=g-import-not-at-top
  rows = {}
  for output_stride in (None, 8):
    model = resnet.resnet(bands=_bands(3), num_classes=0, block=block,
                          stage_sizes=(1, 1, 2, 2), width=4,
                          output_stride=output_stride)
    rows[output_stride] = {r.path: r for r in summary.summarize(
        model, (1, 64, 64, 3)) if r.receptive_field}
  assert rows[None].keys() == rows[8].keys()
  for path, row in rows[None].items():
    dilated = rows[8][path]
    assert dilated.receptive_field == row.receptive_field, path
    assert dilated.jump == min(row.jump, 8), path


def test_layer_ids_by_stage():
  model = resnet.resnet18_truncated(bands=_bands(3), num_classes=4)
  assert model.num_layers() == 3  # stem, two stages, head
  assert model.layer_id("stem_conv/kernel") == 0
  assert model.layer_id("stem_bn/scale") == 0
  assert model.layer_id("stage_1_block_1/conv2/kernel") == 1
  assert model.layer_id("stage_2_block_0/proj_bn/bias") == 2
  assert model.layer_id("head/hidden/kernel") == 3
  assert model.layer_id("encoder/stage_2_block_0/conv1/kernel") == 2
  assert resnet.resnet50(bands=_bands(3), num_classes=0).num_layers() == 5


# --- Parity with a PyTorch network in torchvision's layout -----------------


def _torch_resnet(block, stage_sizes, width, in_ch, num_classes,
                  dilate=()):
  """A hand-written torchvision-style ResNet (NCHW), returned in eval mode.

  `dilate[i]`: stage i + 1 trades its stride for dilation as torchvision's
  `replace_stride_with_dilation` does (the basic block, which torchvision
  leaves undilated, dilates its second conv like the convs after it).
  """
  torch = pytest.importorskip("torch")
  tnn = torch.nn

  class Basic(tnn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride, first=1, dilation=1):
      super().__init__()
      self.conv1 = tnn.Conv2d(cin, planes, 3, stride, first, first,
                              bias=False)
      self.bn1 = tnn.BatchNorm2d(planes)
      self.conv2 = tnn.Conv2d(planes, planes, 3, 1, dilation, dilation,
                              bias=False)
      self.bn2 = tnn.BatchNorm2d(planes)
      self.proj = None
      if stride != 1 or cin != planes:
        self.proj = tnn.Sequential(tnn.Conv2d(cin, planes, 1, stride,
                                              bias=False),
                                   tnn.BatchNorm2d(planes))

    def forward(self, x):
      y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
      return torch.relu(y + (x if self.proj is None else self.proj(x)))

  class Bottle(tnn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride, first=1, dilation=1):
      super().__init__()
      del dilation  # only the strided 3x3 conv, which takes `first`
      self.conv1 = tnn.Conv2d(cin, planes, 1, bias=False)
      self.bn1 = tnn.BatchNorm2d(planes)
      self.conv2 = tnn.Conv2d(planes, planes, 3, stride, first, first,
                              bias=False)
      self.bn2 = tnn.BatchNorm2d(planes)
      self.conv3 = tnn.Conv2d(planes, 4 * planes, 1, bias=False)
      self.bn3 = tnn.BatchNorm2d(4 * planes)
      self.proj = None
      if stride != 1 or cin != 4 * planes:
        self.proj = tnn.Sequential(tnn.Conv2d(cin, 4 * planes, 1, stride,
                                              bias=False),
                                   tnn.BatchNorm2d(4 * planes))

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      y = torch.relu(self.bn2(self.conv2(y)))
      y = self.bn3(self.conv3(y))
      return torch.relu(y + (x if self.proj is None else self.proj(x)))

  cls = Basic if block == "basic" else Bottle

  class Net(tnn.Module):

    def __init__(self):
      super().__init__()
      self.conv1 = tnn.Conv2d(in_ch, width, 7, 2, 3, bias=False)
      self.bn1 = tnn.BatchNorm2d(width)
      self.pool = tnn.MaxPool2d(3, 2, 1)
      blocks, cin, dilation = [], width, 1
      for i, n in enumerate(stage_sizes):
        stride, previous = (2 if i > 0 else 1), dilation
        if i < len(dilate) and dilate[i]:
          dilation, stride = dilation * stride, 1
        for j in range(n):
          blocks.append(cls(cin, width * 2**i, stride if j == 0 else 1,
                            previous if j == 0 else dilation, dilation))
          cin = width * 2**i * cls.expansion
      self.blocks = tnn.ModuleList(blocks)
      self.fc = tnn.Linear(cin, num_classes)

    def forward(self, x):
      x = self.pool(torch.relu(self.bn1(self.conv1(x))))
      for b in self.blocks:
        x = b(x)
      return self.fc(x.mean(dim=(2, 3)))

  return Net().eval()


def _load_into_torch(net, params, stats, stage_sizes):
  import torch  # pylint: disable=g-import-not-at-top

  def conv(m, p):
    m.weight.data = torch.from_numpy(
        np.array(p["kernel"]).transpose(3, 2, 0, 1).copy())

  def bn(m, p, s):
    m.weight.data = torch.from_numpy(np.array(p["scale"]))
    m.bias.data = torch.from_numpy(np.array(p["bias"]))
    m.running_mean.data = torch.from_numpy(np.array(s["mean"]))
    m.running_var.data = torch.from_numpy(np.array(s["var"]))

  conv(net.conv1, params["stem_conv"])
  bn(net.bn1, params["stem_bn"], stats["stem_bn"])
  names = [f"stage_{i + 1}_block_{j}" for i, n in enumerate(stage_sizes)
           for j in range(n)]
  for block, name in zip(net.blocks, names):
    p, s = params[name], stats[name]
    for k in (1, 2, 3):
      if hasattr(block, f"conv{k}"):
        conv(getattr(block, f"conv{k}"), p[f"conv{k}"])
        bn(getattr(block, f"bn{k}"), p[f"bn{k}"], s[f"bn{k}"])
    assert (block.proj is None) == ("proj_conv" not in p)
    if block.proj is not None:
      conv(block.proj[0], p["proj_conv"])
      bn(block.proj[1], p["proj_bn"], s["proj_bn"])
  net.fc.weight.data = torch.from_numpy(np.array(
      params["head"]["fc"]["kernel"]).T.copy())
  net.fc.bias.data = torch.from_numpy(np.array(params["head"]["fc"]["bias"]))


@pytest.mark.parametrize("block,output_stride,stage_sizes,dilate", [
    ("basic", None, (1, 2), ()),
    ("bottleneck", None, (1, 2), ()),
    # Dilated stages with two blocks, so both dilations of a stage count.
    ("bottleneck", 8, (1, 1, 2, 2), (False, False, True, True)),
    ("basic", 16, (1, 1, 1, 2), (False, False, False, True)),
])
def test_matches_torchvision_layout(block, output_stride, stage_sizes, dilate):
  torch = pytest.importorskip("torch")
  model = resnet.resnet(bands=_bands(13), num_classes=5,
                        stage_sizes=stage_sizes, block=block, width=4,
                        output_stride=output_stride)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 13))
  variables = jax.jit(model.init)(jax.random.key(0), x)
  # Non-trivial running statistics, so eval-mode BatchNorm is exercised.
  def random_stat(path, v):
    key = jax.random.fold_in(jax.random.key(2), len(jax.tree_util.keystr(path)))
    if jax.tree_util.keystr(path).endswith("['var']"):
      return 0.5 + jax.random.uniform(key, v.shape)
    return 0.1 * jax.random.normal(key, v.shape)

  stats = jax.tree_util.tree_map_with_path(random_stat,
                                           variables["batch_stats"])
  variables = {"params": variables["params"], "batch_stats": stats}
  logits, _ = jax.jit(model.apply)(variables, x)

  net = _torch_resnet(block, stage_sizes, 4, 13, 5, dilate)
  _load_into_torch(net, variables["params"], stats, stage_sizes)
  with torch.no_grad():
    expected = net(torch.from_numpy(np.array(x).transpose(0, 3, 1, 2)))
  np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_frozen_stages_run_in_inference_mode_without_gradient():
  kwargs = dict(bands=_bands(4), num_classes=3, stage_sizes=(1, 1),
                width=4, low_res_stem=True)
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 4)) * 3 + 1
  labels = jnp.array([0, 1, 2, 0])
  variables = resnet.resnet(**kwargs).init(jax.random.key(0), x)
  # Non-trivial running statistics, so inference mode differs from train mode.
  variables = {**variables, "batch_stats": jax.tree.map(
      lambda v: v + 0.3, variables["batch_stats"])}
  frozen = resnet.resnet(frozen_stages=1, **kwargs)
  free = resnet.resnet(**kwargs)

  def loss(params, model):
    (logits, feats), new_state = model.apply(
        {"params": params, "batch_stats": variables["batch_stats"]}, x,
        train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean(), (feats, new_state)

  grads, (feats, new_state) = jax.grad(loss, has_aux=True)(
      variables["params"], frozen)
  free_grads, _ = jax.grad(loss, has_aux=True)(variables["params"], free)
  for part in ("stem_conv", "stem_bn", "stage_1_block_0"):
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads[part]))
    assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(free_grads[part]))
    for old, new in zip(jax.tree.leaves(variables["batch_stats"].get(part, {})),
                        jax.tree.leaves(new_state["batch_stats"].get(part, {}))):
      np.testing.assert_array_equal(old, new)  # running stats untouched
  assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads["stage_2_block_0"]))
  assert not np.allclose(new_state["batch_stats"]["stage_2_block_0"]["bn1"]["mean"],
                         variables["batch_stats"]["stage_2_block_0"]["bn1"]["mean"])
  # The frozen part computes what the whole model computes in inference mode.
  _, eval_feats = free.apply(variables, x, train=False)
  np.testing.assert_allclose(feats["stage_1"], eval_feats["stage_1"], rtol=1e-6)
  with pytest.raises(ValueError, match="frozen_stages=3"):
    resnet.resnet(frozen_stages=3, **kwargs).init(jax.random.key(0), x)
