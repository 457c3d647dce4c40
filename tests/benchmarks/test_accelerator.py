"""benchmarks/accelerator.py runs its tiny CPU version and reports consistent rows.

The full tiny table (5 cases x 2 dtypes) spends minutes compiling on 2 CPU
cores; the suite runs one case in one dtype, the rest is `slow`.
"""
import pytest

from benchmarks import accelerator


def _check(rows, cases, dtypes):
  assert [(r["case"], r["dtype"]) for r in rows] == [
      (c, d) for c in cases for d in dtypes]
  for r in rows:
    assert r["global_batch"] == 4
    # images/s is the batch over the median step time, TFLOP/s the cost
    # analysis' FLOPs at that rate; no MFU on CPU (not in the peak table).
    assert r["images_per_second"] == pytest.approx(4e3 / r["ms_per_step"])
    assert r["tflops_per_second"] > 0
    assert r["mfu"] is None


def test_tiny_cpu_run_of_one_case(capsys):
  rows = accelerator.main(["--cases", "vit_s8", "--dtypes", "bfloat16",
                           "--steps", "1"])
  _check(rows, ["vit_s8"], ["bfloat16"])
  out = capsys.readouterr().out
  assert "| vit_s8 | bfloat16 | 4 |" in out and "tiny models" in out


@pytest.mark.slow
def test_tiny_cpu_run_of_every_case():
  rows = accelerator.main(["--steps", "1"])
  _check(rows, list(accelerator.CASES), ["bfloat16", "float32"])


def test_unknown_case_is_named():
  with pytest.raises(SystemExit, match="Unknown case"):
    accelerator.main(["--cases", "nope", "--steps", "1"])
