"""eo_jax.config: the schema's guards, config-file arguments and loading."""
import os

import pytest

from eo_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.py")


def test_parse_arg_types_values_and_rejects_unknown_keys():
  arg = config_lib.parse_arg("variant=S/8,epochs=3,lr=1e-3,runlocal,path=",
                             variant="Ti/16", epochs=1, lr=0.1,
                             runlocal=False, path="/x")
  assert arg.variant == "S/8"            # not a literal: kept as a string
  assert arg.epochs == 3 and isinstance(arg.epochs, int)
  assert arg.lr == pytest.approx(1e-3)
  assert arg.runlocal is True            # a bare key means True
  assert arg.path == ""
  assert config_lib.parse_arg(None, a=1).a == 1
  with pytest.raises(KeyError, match="Unknown config argument 'epoch'.*"
                     "Did you mean 'epochs'"):
    config_lib.parse_arg("epoch=3", epochs=1)
  # A text argument stays text even where it reads as a number.
  assert config_lib.parse_arg("path=2750", path="").path == "2750"
  assert config_lib.parse_arg("runlocal=true", runlocal=False).runlocal is True
  with pytest.raises(TypeError, match="'epochs' takes an int like its default 1"):
    config_lib.parse_arg("epochs=many", epochs=1)


def test_load_config_matches_the_files_own_get_config():
  module = config_lib.config_module(QUICKSTART)
  want = module.get_config("runlocal=True")
  got = config_lib.load_config(QUICKSTART + ":runlocal=True")
  assert got.to_dict() == want.to_dict()
  assert got.is_locked
  assert not config_lib.load_config(QUICKSTART, lock=False).is_locked


def test_load_config_overrides_and_their_errors():
  c = config_lib.load_config(QUICKSTART, {"train.steps": 7, "optim.lr": 0.5})
  assert (c.train.steps, c.optim.lr) == (7, 0.5)
  with pytest.raises(KeyError, match="no key 'optim.lrr'"):
    config_lib.load_config(QUICKSTART, {"optim.lrr": 0.1})
  with pytest.raises(KeyError, match="no key 'optimm.lr' .*no top-level 'optimm'"):
    config_lib.load_config(QUICKSTART, {"optimm.lr": 0.1})
  # Dataset and model fields are factory arguments: new ones may be added.
  c = config_lib.load_config(QUICKSTART, {"data.bands": ("B04", "B03")})
  assert tuple(c.data.bands) == ("B04", "B03")
  with pytest.raises(FileNotFoundError, match="does not exist.*quickstart.py"):
    config_lib.load_config(os.path.join(ROOT, "configs", "quickstar.py"))


def test_locked_base_config_rejects_new_keys():
  c = config_lib.base_config()
  c.lock()
  with pytest.raises(KeyError):
    config_lib.set_dotted(c, "train.stepz", 3)
  with pytest.raises(AttributeError):
    c.train.stepz = 3
