"""BagNet: receptive fields checked by gradients, output contract, parity with
a hand-written PyTorch network laid out like the reference implementation."""
import importlib.util

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eo_jax import backend
from eo_jax.data import bands
from eo_jax.models import bagnet as bagnet_lib
from eo_jax.models.registry import MODELS, build_model

# Published receptive fields (Brendel & Bethge 2019): q, and every variant's
# output grid steps 8 pixels (strides 2, 2, 2, 1) starting at pixel 0.
PUBLISHED = {"bagnet9": 9, "bagnet17": 17, "bagnet33": 33}


def random_variables(model, image_shape, seed=0):
  """Random parameters and BatchNorm statistics without compiling `init`.

  Shapes come from `jax.eval_shape`; values are drawn with numpy. Kernels get
  He-scaled normals, BatchNorm random scales, shifts and statistics (so eval
  mode is not the identity), the head a random bias.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros(image_shape, jnp.float32))

  def draw(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == "kernel":
      values = rng.normal(0, np.sqrt(2 / np.prod(shape[:-1])), shape)
    elif name in ("scale", "var"):
      values = rng.uniform(0.5, 1.5, shape)
    else:  # bias, mean
      values = rng.normal(0, 0.2, shape)
    return jnp.asarray(values, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _build(name, num_classes=3, width=4, **kwargs):
  return MODELS.get(name)(bands=bands.RGB, num_classes=num_classes,
                          width=width, **kwargs)


def _shallow(kernel3, **kwargs):
  """One block per stage: same receptive field, a quarter of the compile."""
  return _build("bagnet", kernel3=kernel3, blocks=(1, 1, 1, 1), **kwargs)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_receptive_field_matches_published_values(name):
  model = _build(name)
  assert model.rf == (PUBLISHED[name], 8, 0)
  assert bagnet_lib.RECEPTIVE_FIELDS[name] == (PUBLISHED[name], 8, 0)


def test_zero_init_residual_zeroes_the_last_bn_scale_of_every_block():
  model = _shallow((1, 1, 0, 0), zero_init_residual=True)
  blocks = _blocks(model)
  assert len(blocks) == 4 and all(b.zero_init_last_bn for b in blocks)
  block = bagnet_lib.Bottleneck(2, kernel=3, zero_init_last_bn=True)
  params = jax.jit(block.init)(jax.random.key(0), jnp.ones((1, 5, 5, 8)))
  np.testing.assert_array_equal(params["params"]["bn3"]["scale"], 0.0)
  np.testing.assert_array_equal(params["params"]["bn2"]["scale"], 1.0)
  # Starting as the identity: the block returns relu(cropped input).
  out = block.apply(params, jnp.full((1, 5, 5, 8), -1.0).at[:, :3, :3].set(2.0))
  np.testing.assert_allclose(out, jnp.full((1, 3, 3, 8), 2.0))


def _blocks(model):
  """The Bottleneck modules a model creates, found by tracing it."""
  found = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, bagnet_lib.Bottleneck):
      found.append(context.module)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    _output_shapes(model, (1, 9, 9, 3))
  return found


def test_generic_bagnet_takes_kernel3_counts():
  assert _build("bagnet", kernel3=(1, 1, 0, 0)).rf.size == 9
  # Stage 3's first 3x3 sees its input at jump 4 (+8 pixels); its second one
  # comes after the stride, at jump 8 (+16).
  assert _build("bagnet", kernel3=(1, 1, 2, 0)).rf.size == 9 + 8 + 16
  assert _build("bagnet", kernel3=(0, 0, 0, 0)).rf.size == 3
  with pytest.raises(ValueError, match="kernel3"):
    _build("bagnet", kernel3=(4, 0, 0, 0))
  with pytest.raises(ValueError, match="one entry per stage"):
    _build("bagnet", kernel3=(1, 1, 1))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_gradient_of_one_location_fills_exactly_its_window(name):
  """The logit at one interior location depends on exactly a q x q window."""
  model = _build(name, width=8)
  q, jump, offset = model.rf
  image = jax.random.normal(jax.random.key(1), (1, 56, 56, 3))
  variables = random_variables(model, image.shape)
  h = w = model.rf.output_size(56)
  assert h >= 3
  i, j = h // 2, w // 2

  def location_logit(x):
    _, feats = model.apply(variables, x, train=False)
    return feats["local_logits"][0, i, j, 1], feats["local_logits"].shape

  grad, shape = jax.jit(jax.grad(location_logit, has_aux=True))(image)
  assert shape == (1, h, w, 3)
  grad = np.abs(np.asarray(grad))[0].sum(-1)
  rows = np.flatnonzero(grad.sum(1))
  cols = np.flatnonzero(grad.sum(0))
  top, left = offset + i * jump, offset + j * jump
  # Zero outside the window, and non-zero on all four of its edges.
  assert (rows.min(), rows.max()) == (top, top + q - 1)
  assert (cols.min(), cols.max()) == (left, left + q - 1)
  window = grad[top:top + q, left:left + q]
  assert window[0].any() and window[-1].any()
  assert window[:, 0].any() and window[:, -1].any()


def _output_shapes(model, image_shape, **kwargs):
  image = jax.ShapeDtypeStruct(image_shape, jnp.float32)
  return jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x, **kwargs), image)


@pytest.mark.parametrize("name,size,expected", [
    ("bagnet9", 9, 1), ("bagnet9", 64, 7), ("bagnet17", 24, 1),
    ("bagnet17", 25, 2), ("bagnet33", 40, 1), ("bagnet33", 64, 4)])
def test_output_grid_size(name, size, expected):
  # Hand-computed: floor((size - q) / 8) + 1 locations per axis.
  model = _shallow(bagnet_lib.VARIANTS[name])
  (_, features), _ = _output_shapes(model, (1, size, size + 8, 3))
  assert features["local_logits"].shape == (1, expected, expected + 1, 3)
  assert model.rf.output_size(size) == expected


@pytest.fixture(scope="module")
def shallow17():
  """A one-block-per-stage BagNet-17 with random weights, applied once."""
  model = _shallow((1, 1, 1, 0), num_classes=5)
  image = jax.random.normal(jax.random.key(2), (2, 40, 48, 3))
  variables = random_variables(model, image.shape)
  logits, features = jax.jit(model.apply)(variables, image)
  return model, variables, image, logits, features


def test_output_contract_and_pooling(shallow17):
  _, variables, _, logits, features = shallow17
  assert logits.shape == (2, 5) and logits.dtype == jnp.float32
  local = features["local_logits"]
  assert local.shape == (2, 3, 4, 5)
  np.testing.assert_allclose(logits, local.mean(axis=(1, 2)), rtol=1e-5,
                             atol=1e-5)
  assert features["stem"].shape == (2, 38, 46, 4)
  assert features["stage_4"].shape == (2, 3, 4, 128)
  assert features["pre_logits"].shape == (2, 128)
  for k in range(1, 5):
    assert f"stage_{k}" in features
  # The head is one linear map, so pooled features classified == mean logits.
  head = variables["params"]["head"]
  assert head["kernel"].shape == (128, 5)
  np.testing.assert_allclose(
      features["pre_logits"] @ head["kernel"] + head["bias"], logits,
      rtol=1e-4, atol=1e-4)


def test_no_head_returns_pooled_features(shallow17):
  _, variables, image, _, features = shallow17
  backbone = _shallow((1, 1, 1, 0), num_classes=0)
  params = {k: v for k, v in variables["params"].items() if k != "head"}
  (_, _), shapes = _output_shapes(backbone, image.shape)
  assert "head" not in shapes["params"]
  out, feats = jax.jit(backbone.apply)(
      {"params": params, "batch_stats": variables["batch_stats"]}, image)
  assert "local_logits" not in feats
  np.testing.assert_array_equal(out, feats["pre_logits"])
  np.testing.assert_allclose(out, features["pre_logits"], rtol=1e-5, atol=1e-5)


def test_train_mode_updates_batch_stats(shallow17):
  model, variables, image, _, _ = shallow17
  (_, _), updates = jax.jit(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
          variables, image)
  before = variables["batch_stats"]["stem_bn"]["mean"]
  after = updates["batch_stats"]["stem_bn"]["mean"]
  assert not np.allclose(before, after)


def test_batch_norm_momenta_follow_the_reference(shallow17):
  # The reference's stem BatchNorm has PyTorch momentum 0.001, its others
  # PyTorch's default 0.1: running means move by that much of the batch's.
  model, variables, image, _, _ = shallow17
  (_, _), updates = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=["batch_stats"],
      capture_intermediates=lambda m, _: m.name in ("stem_conv2", "conv1")))(
          variables, image)
  inputs = updates["intermediates"]
  for path, inp, rate in (
      (("stem_bn",), inputs["stem_conv2"], 0.001),
      (("stage_1_block_0", "bn1"), inputs["stage_1_block_0"]["conv1"], 0.1),
      (("stage_3_block_0", "bn1"), inputs["stage_3_block_0"]["conv1"], 0.1)):
    before, after = variables["batch_stats"], updates["batch_stats"]
    for key in path:
      before, after = before[key], after[key]
    batch_mean = np.asarray(inp["__call__"][0]).mean(axis=(0, 1, 2))
    expected = (1 - rate) * np.asarray(before["mean"]) + rate * batch_mean
    np.testing.assert_allclose(after["mean"], expected, rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(after["mean"]) - before["mean"]).max() > 1e-4


def test_torch_head_init_is_pytorch_linear_and_default_is_unchanged():
  image = jnp.zeros((1, 16, 16, 3))
  fan_in = 4 * 8 * 4  # width 4, stage 4 has 8x bottleneck channels, x 4
  bound = 1 / np.sqrt(fan_in)
  heads = {}
  for head_init in ("torch", "default"):
    model = _shallow((1, 1, 0, 0), num_classes=200, head_init=head_init)
    with backend.init_rng_context():  # compiles ~10x faster on CPU
      params = jax.jit(model.init)(jax.random.key(0), image)["params"]
    heads[head_init] = jax.tree.map(np.asarray, params["head"])
  kernel, bias = heads["torch"]["kernel"], heads["torch"]["bias"]
  assert kernel.shape == (fan_in, 200)
  # U(-b, b): within the bound, reaching it, std b / sqrt(3), mean 0. With
  # 25,600 kernel draws the std's standard error is ~0.3% (bias: 200
  # draws, ~3%); the margins are ~10 and ~5 of those.
  for values, tol in ((kernel, 0.03), (bias, 0.15)):
    assert np.abs(values).max() <= bound
    assert np.abs(values).max() > 0.95 * bound
    assert abs(values.std() / (bound / np.sqrt(3)) - 1) < tol
    assert abs(values.mean()) < 5 * bound / np.sqrt(3 * values.size)
  # Flax's Dense default: zero bias, LeCun-normal kernel (std 1/sqrt(fan_in),
  # truncated at 2 std), so some entries pass the uniform bound.
  np.testing.assert_array_equal(heads["default"]["bias"], 0.0)
  assert np.abs(heads["default"]["kernel"]).max() > 1.2 * bound


def test_head_init_comes_from_the_config():
  model = build_model({"name": "bagnet9", "head_init": "torch"},
                      bands=bands.RGB, num_classes=3)
  assert model.head_init == "torch"
  with pytest.raises(ValueError, match="config.model.head_init"):
    build_model({"name": "bagnet", "head_init": "xavier"}, bands=bands.RGB,
                num_classes=3)


def test_dense_maps_and_layer_ids():
  model = _build("bagnet17")
  assert model.dense_maps() == {"stem": 1, "stage_1": 2, "stage_2": 4,
                                "stage_3": 8, "stage_4": 8}
  assert model.num_layers() == 5
  assert [model.layer_id(p) for p in (
      "stem_conv1/kernel", "stem_bn/scale", "stage_1_block_2/conv2/kernel",
      "stage_4_block_0/proj_bn/bias", "head/kernel")] == [0, 0, 1, 4, 5]


def test_any_band_count():
  model = bagnet_lib.bagnet(bands=bands.SENTINEL2, num_classes=2, width=4,
                            kernel3=(1, 1, 0, 0), blocks=(1, 1, 1, 1))
  (logits, _), shapes = _output_shapes(model, (4, 24, 24, 13))
  assert shapes["params"]["stem_conv1"]["kernel"].shape == (1, 1, 13, 4)
  assert logits.shape == (4, 2)


def test_bfloat16_computes_in_bfloat16_and_returns_float32_logits():
  model = _shallow((1, 1, 0, 0), dtype="bfloat16")
  (logits, features), shapes = _output_shapes(model, (1, 16, 16, 3))
  assert features["stage_2"].dtype == jnp.bfloat16
  assert features["local_logits"].dtype == jnp.float32
  assert logits.dtype == jnp.float32
  assert shapes["params"]["head"]["kernel"].dtype == jnp.float32
  # Against float32 with the same (random, non-trivial) variables.
  image = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
  variables = random_variables(model, image.shape)
  logits, features = jax.jit(model.apply)(variables, image)
  ref_logits, ref = jax.jit(_shallow((1, 1, 0, 0)).apply)(variables, image)
  # bfloat16 rounds to 8 significant bits (<= 2^-8 = 0.39% per op); after
  # the stem and four blocks the measured max errors are 1.1% (stage_2),
  # 1.1% (pre_logits) and 0.86% (logits) of each tensor's max |value|; 5%
  # leaves ~4x margin.
  for got, want in ((logits, ref_logits),
                    (features["stage_2"], ref["stage_2"]),
                    (features["pre_logits"], ref["pre_logits"])):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert np.abs(want).max() > 1.0  # a meaningful scale
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()
    assert not np.array_equal(got, want)  # bfloat16 was really used


def test_bad_inputs_fail_clearly():
  model = _shallow((1, 1, 1, 1))
  with pytest.raises(ValueError, match="at least 33x33"):
    _output_shapes(model, (1, 32, 64, 3))
  with pytest.raises(ValueError, match="3 bands.*13 channels"):
    _output_shapes(model, (1, 40, 40, 13))
  with pytest.raises(ValueError, match="mask"):
    _output_shapes(model, (1, 40, 40, 3), mask=jnp.zeros((1, 4)))
  with pytest.raises(TypeError, match="generic 'bagnet'"):
    _build("bagnet9", kernel3=(1, 1, 1, 1))


def test_summary_reports_the_same_receptive_field():
  if importlib.util.find_spec("eo_jax.summary") is None:
    pytest.skip("eo_jax.summary is not written yet")
  from eo_jax import summary  # pylint: disable=g-import-not-at-top
  for name, q in PUBLISHED.items():
    rows = summary.summarize(_build(name), (1, 48, 48, 3))
    head = [r for r in rows if r.path == "head"]
    assert len(head) == 1, name
    assert (head[0].receptive_field, head[0].jump) == (q, 8), name
    assert max(r.receptive_field or 0 for r in rows) == q, name


# --- Parity with a PyTorch network laid out like the reference -------------


def _torch_reference(width, kernel3, num_classes, blocks=(3, 4, 6, 3),
                     strides=(2, 2, 2, 1)):
  """BagNet as the reference builds it: NCHW, shortcut cropped at the end."""
  torch = pytest.importorskip("torch")
  nn = torch.nn

  class Block(nn.Module):

    def __init__(self, cin, mid, kernel, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(mid)
      self.conv2 = nn.Conv2d(mid, mid, kernel, stride=stride, bias=False)
      self.bn2 = nn.BatchNorm2d(mid)
      self.conv3 = nn.Conv2d(mid, 4 * mid, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(4 * mid)
      self.down = None
      if stride != 1 or cin != 4 * mid:
        self.down = nn.Sequential(
            nn.Conv2d(cin, 4 * mid, 1, stride=stride, bias=False),
            nn.BatchNorm2d(4 * mid))

    def forward(self, x):
      out = torch.relu(self.bn1(self.conv1(x)))
      out = torch.relu(self.bn2(self.conv2(out)))
      out = self.bn3(self.conv3(out))
      res = x if self.down is None else self.down(x)
      res = res[:, :, :out.shape[2], :out.shape[3]]
      return torch.relu(out + res)

  class Net(nn.Module):

    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(3, width, 1, bias=False)
      self.conv2 = nn.Conv2d(width, width, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      stages, cin = [], width
      for i, (k3, s, n) in enumerate(zip(kernel3, strides, blocks)):
        mid = width * 2**i
        stages.append(nn.Sequential(*[
            Block(cin if j == 0 else 4 * mid, mid, 3 if j < k3 else 1,
                  s if j == 0 else 1) for j in range(n)]))
        cin = 4 * mid
      self.stages = nn.ModuleList(stages)
      self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
      x = torch.relu(self.bn1(self.conv2(self.conv1(x))))
      for stage in self.stages:
        x = stage(x)
      return self.fc(x.permute(0, 2, 3, 1))  # per-location logits, NHWC

  return torch, Net()


def _load_into_torch(torch, net, variables):
  params, stats = variables["params"], variables["batch_stats"]

  def conv(module, p):
    module.weight.data = torch.from_numpy(
        np.asarray(p["kernel"]).transpose(3, 2, 0, 1).copy())

  def norm(module, p, s):
    module.weight.data = torch.from_numpy(np.asarray(p["scale"]).copy())
    module.bias.data = torch.from_numpy(np.asarray(p["bias"]).copy())
    module.running_mean.data = torch.from_numpy(np.asarray(s["mean"]).copy())
    module.running_var.data = torch.from_numpy(np.asarray(s["var"]).copy())

  conv(net.conv1, params["stem_conv1"])
  conv(net.conv2, params["stem_conv2"])
  norm(net.bn1, params["stem_bn"], stats["stem_bn"])
  for i, stage in enumerate(net.stages):
    for j, block in enumerate(stage):
      name = f"stage_{i + 1}_block_{j}"
      p, s = params[name], stats[name]
      for k in (1, 2, 3):
        conv(getattr(block, f"conv{k}"), p[f"conv{k}"])
        norm(getattr(block, f"bn{k}"), p[f"bn{k}"], s[f"bn{k}"])
      if block.down is not None:
        conv(block.down[0], p["proj_conv"])
        norm(block.down[1], p["proj_bn"], s["proj_bn"])
  net.fc.weight.data = torch.from_numpy(
      np.asarray(params["head"]["kernel"]).T.copy())
  net.fc.bias.data = torch.from_numpy(np.asarray(params["head"]["bias"]).copy())


@pytest.mark.parametrize("name", ["bagnet9", "bagnet33"])
def test_matches_reference_layout_in_pytorch(name):
  model = _build(name, num_classes=4)
  image = jax.random.normal(jax.random.key(4), (2, 45, 53, 3))
  variables = random_variables(model, image.shape)
  logits, features = jax.jit(model.apply)(variables, image)

  torch, net = _torch_reference(4, bagnet_lib.VARIANTS[name], 4)
  _load_into_torch(torch, net, variables)
  net.eval()
  with torch.no_grad():
    expected = net(torch.from_numpy(np.array(image).transpose(0, 3, 1, 2)))
  expected = expected.numpy()
  # Deep random nets have large logits; float32 round-off scales with them.
  tol = 1e-5 * np.abs(expected).max()
  np.testing.assert_allclose(features["local_logits"], expected, rtol=1e-5,
                             atol=tol)
  np.testing.assert_allclose(logits, expected.mean((1, 2)), rtol=1e-5,
                             atol=tol)
