"""Command-line config overrides: taken out of argv, applied by load_config."""
import os

import pytest

from eo_jax import config as config_lib
from eo_jax import errors
from eo_jax.data.datasets import build_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.py")
EUROSAT = os.path.join(ROOT, "configs", "eurosat.py")

split = config_lib.split_config_overrides


def _load(spec, *argv):
  """What main.py does: split argv, let absl have the rest, load."""
  rest, overrides = split(["main.py", f"--config={spec}", *argv])
  assert rest == ["main.py", f"--config={spec}"]
  return config_lib.load_config(spec, overrides)


def test_both_forms_are_taken_in_order_and_other_flags_are_left():
  argv = ["main.py", "--config=configs/eurosat.py:variant=rgb,runlocal=True",
          "--config.train.steps=10", "--workdir", "/tmp/run",
          "--config.data.path", "/data/eurosat", "--distributed",
          "-config.optim.lr=0.5", "--config.optim.lr", "-1e-3",
          "--config", "configs/quickstart.py", "--", "--config.seed=3"]
  rest, overrides = split(argv)
  assert rest == ["main.py", "--config=configs/eurosat.py:variant=rgb,runlocal=True",
                  "--workdir", "/tmp/run", "--distributed", "--config",
                  "configs/quickstart.py", "--", "--config.seed=3"]
  # A repeated key keeps its last value, at its last position.
  assert list(overrides.items()) == [("train.steps", 10),
                                     ("data.path", "/data/eurosat"),
                                     ("optim.lr", -1e-3)]
  assert split(["main.py"]) == (["main.py"], {})


@pytest.mark.parametrize("text, value", [
    ("10", 10), ("1e-3", 1e-3), ("-2", -2), ("True", True), ("False", False),
    ("None", None), ("(1,2)", (1, 2)), ("('B04', 'B03')", ("B04", "B03")),
    ("[0.5, 1.0]", [0.5, 1.0]), ("{'train': 'tr'}", {"train": "tr"}),
    ("'10'", "10"), ("S/8", "S/8"), ("/data/eurosat", "/data/eurosat"),
    ("B04,B03", "B04,B03"), ("", ""), ("a b", "a b"), ("{[1]: 2}", "{[1]: 2}"),
])
def test_values_are_python_literals_or_else_strings(text, value):
  for argv in (["--config.k=" + text], ["--config.k", text]):
    if not text and len(argv) == 2:
      continue  # an empty separate argument is absl's business
    got = split(argv)[1]["k"]
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("argv, message", [
    (["--config.train.steps"], "has no value; write --config.train.steps=<value>"),
    (["--config.train.steps", "--workdir=x"], "has no value"),
    (["--config.=3"], "names no config key"),
    (["--config.train..steps=3"], "names no config key"),
])
def test_malformed_overrides_say_how_to_write_them(argv, message):
  with pytest.raises(errors.ConfigValueError, match=message):
    split(["main.py", *argv])


def test_a_none_field_takes_any_type():
  config = _load(EUROSAT, "--config.data.path=/data/eurosat",
                 "--config.optim.weight_decay_end", "0.01")
  assert config.data.path == "/data/eurosat"      # was None
  assert config.optim.weight_decay_end == 0.01    # was None
  assert config.is_locked
  assert _load(EUROSAT, "--config.data.path='2750'").data.path == "2750"


def test_new_dataset_fields_pass_and_the_factory_checks_them():
  # eolearn_sample takes patch_size; quickstart's config does not set it.
  config = _load(QUICKSTART, "--config.data.patch_size=5",
                 "--config.data.bands=B04,B03")
  dataset = build_dataset(config.data, with_stats=False)
  assert dataset.info.image_size == (5, 5)
  assert [b.name for b in dataset.info.bands] == ["B04", "B03"]
  config = _load(QUICKSTART, "--config.data.patch_sise=5")
  with pytest.raises(errors.UserError) as e:
    build_dataset(config.data)
  assert isinstance(e.value, TypeError)
  assert ("config.data for dataset 'eolearn_sample' has unknown field(s) "
          "['patch_sise'] (did you mean 'patch_size' for 'patch_sise'?)") in str(
              e.value)


def test_unknown_keys_fail_with_the_closest_keys():
  cases = {
      "--config.optim.lrr=0.1": "The config has no key 'optim.lrr' (config.optim "
                                "has no field 'lrr'). Did you mean 'optim.lr'?",
      "--config.optimm.lr=0.1": "(there is no top-level 'optimm'). Did you mean "
                                "'optim.lr'?",
      "--config.train.lr=0.1": "Did you mean 'optim.lr'?",
      "--config.seeed=1": "The config has no key 'seeed'. Did you mean 'seed'?",
  }
  for arg, message in cases.items():
    with pytest.raises(config_lib.ConfigKeyError) as e:
      _load(QUICKSTART, arg)
    assert message in str(e.value)
    # A KeyError for callers that catch one, and a UserError that main.py
    # prints as one line.
    assert isinstance(e.value, KeyError) and isinstance(e.value, errors.UserError)
    assert str(e.value).startswith("The config")  # not quoted like KeyError
  with pytest.raises(config_lib.ConfigKeyError) as e:
    _load(QUICKSTART, "--config.optim.lrr=0.1", "--config.train.stepz=3")
  assert "'optim.lr'" in str(e.value) and "'train.steps'" in str(e.value)
  # A group missing under a factory node: the factory checks fields, so say
  # how to pass the whole value.
  with pytest.raises(config_lib.ConfigKeyError, match=(
      r"config.data has no 'split_dirs'.*dataset factory.*"
      r"--config.data.split_dirs=\"\{'train': <value>\}\"")):
    _load(QUICKSTART, "--config.data.split_dirs.train=tr")


def test_wrong_types_say_what_the_field_takes():
  cases = {
      "--config.train.steps=ten": "config.train.steps cannot be set to 'ten' (a "
                                  "str): it takes an int (now 6). Give a number",
      "--config.model.name=3": "quote it: --config.model.name='\"3\"'",
      "--config.train.progress_bar=yes": "Write True or False.",
      "--config.input.augment=3": "it is a group of settings (crop_ratio",
  }
  for arg, message in cases.items():
    with pytest.raises(errors.ConfigTypeError) as e:
      _load(QUICKSTART + ":runlocal=True", arg)
    assert message in str(e.value)
  with pytest.raises(errors.ConfigTypeError,
                     match=r"--config.data.bands=\"\('B04', 'B03'\)\""):
    _load(EUROSAT, "--config.data.bands=B04,B03")
  config = _load(QUICKSTART, "--config.train.progress_bar=false",
                 "--config.optim.lr=1")
  assert config.train.progress_bar is False
  assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)


def test_an_unknown_config_file_argument_names_the_file_and_the_fix():
  with pytest.raises(config_lib.ConfigKeyError) as e:
    config_lib.load_config(QUICKSTART + ":runlcal=True")
  assert str(e.value) == (f"{QUICKSTART}: Unknown config argument 'runlcal'; "
                          "this config takes ['runlocal']. Did you mean "
                          "'runlocal'?")


def test_set_dotted_adds_factory_fields_to_a_locked_config():
  # The sweep overrides configs that are already locked.
  config = config_lib.base_config()
  config.lock()
  config_lib.set_dotted(config, "data.patch_size", 5)
  config_lib.set_dotted(config, "evals.knn.type", "knn")
  assert config.data.patch_size == 5 and config.evals.knn.type == "knn"
  assert config.data.is_locked and config.evals.knn.is_locked
  with pytest.raises(config_lib.ConfigKeyError, match="train.steps"):
    config_lib.set_dotted(config, "train.stepz", 3)
