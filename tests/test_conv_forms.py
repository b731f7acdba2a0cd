"""The convolution forms jaxgen.layers chooses between, and how it chooses (jaxgen.conv_forms)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import conv_forms, layers
from test_layers import CASES, _inputs, _plain

MAPS = ("forward", "input_grad", "weight_grad")


def _map_inputs(size, cin, cout, k, stride, padding):
  x, w = _inputs(size, cin, cout, k)
  y, vjp = jax.vjp(lambda x, w: _plain(x, w, stride, padding), x, w)
  dy = jax.random.normal(jax.random.PRNGKey(1), y.shape)
  dx, dw = vjp(dy)
  return x, w, dy, {"forward": y, "input_grad": dx, "weight_grad": dw}


def _all_forms(x, w, dy, stride, padding):
  return {"forward": (layers.forward_forms(x, w, stride, padding), (x, w)),
          "input_grad": (layers.input_grad_forms(dy, w, stride, padding, x.shape[1:3]), (dy, w)),
          "weight_grad": (layers.weight_grad_forms(x, dy, stride, padding, w.shape[:2]), (x, dy))}


@pytest.mark.parametrize("size,cin,cout,k,stride,padding", CASES)
def test_every_form_of_every_map_computes_the_same_map(size, cin, cout, k, stride, padding):
  x, w, dy, expected = _map_inputs(size, cin, cout, k, stride, padding)
  for name, ((forms, fixed), args) in _all_forms(x, w, dy, stride, padding).items():
    assert "lax" in forms and fixed in forms, (name, sorted(forms), fixed)
    for form, fn in forms.items():
      np.testing.assert_allclose(jax.jit(fn)(*args), expected[name], rtol=1e-4, atol=1e-4,
                                 err_msg=f"{name} as {form}")


def test_which_forms_apply_to_which_shapes():
  x, w, dy, _ = _map_inputs(8, 3, 5, 4, 2, 1)  # a strided layer: every phase form applies
  forms = {name: sorted(f[0]) for name, (f, _) in _all_forms(x, w, dy, 2, 1).items()}
  assert forms == {"forward": ["lax", "patches", "phase"],
                   "input_grad": ["lax", "phase", "subpixel"],
                   "weight_grad": ["lax", "patches", "phase", "phase_patches"]}
  x, w, dy, _ = _map_inputs(4, 6, 2, 4, 1, 0)  # a 4x4 -> 1 head: a matrix product, no phases
  forms = {name: (sorted(f[0]), f[1]) for name, (f, _) in _all_forms(x, w, dy, 1, 0).items()}
  assert forms == {
      "forward": (["lax", "matmul"], "matmul"), "input_grad": (["lax", "matmul"], "matmul"),
      "weight_grad": (["lax", "matmul"], "matmul")}


@pytest.mark.parametrize("forms", [
    {"forward": "phase", "input_grad": "phase", "weight_grad": "patches"},
    {"forward": "patches", "input_grad": "lax", "weight_grad": "phase"},
    {"forward": "lax", "input_grad": "subpixel", "weight_grad": "lax"}])
def test_forced_forms_give_the_same_penalty_gradients(forms):
  """The double backward of a gradient penalty through a strided layer, every map forced to a
  form other than the fixed table's, against plain autodiff."""
  x, w, _, _ = _map_inputs(8, 3, 6, 4, 2, 1)
  v = jax.random.normal(jax.random.PRNGKey(4), (4, 4, 6, 2)) / 10

  def loss(conv, x, w):
    score = lambda x: jnp.sum(jnp.tanh(conv(jax.nn.relu(conv(x, w, 2, 1)), v, 1, 0)))
    g = jax.grad(score)(x)
    return jnp.sum(jnp.sqrt(jnp.sum(g * g, axis=(1, 2, 3)))) + score(x)

  plain = jax.grad(lambda x, w: loss(_plain, x, w), (0, 1))(x, w)
  with conv_forms.forced(forms):
    forced = jax.jit(jax.grad(lambda x, w: loss(layers.conv2d, x, w), (0, 1)))(x, w)
  for a, b in zip(forced, plain):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.fixture
def measuring(tmp_path, monkeypatch):
  """Measured choice with a cache file of this test's own; the process's choices forgotten."""
  path = tmp_path / "conv_forms.json"
  monkeypatch.setenv(conv_forms.MODE_VARIABLE, "measure")
  monkeypatch.setenv(conv_forms.CACHE_VARIABLE, str(path))
  conv_forms.reset()
  yield path
  conv_forms.reset()


def _grads(x, w):
  return jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(layers.conv2d(x, w, 2, 1))), (0, 1)))(x, w)


def test_measured_choices_are_timed_cached_and_reused(measuring, monkeypatch, capsys):
  x, w = _inputs(8, 3, 5, 4)
  measured = _grads(x, w)
  said = capsys.readouterr().err
  assert said.count("jaxgen: timing convolution forms") == 1 and str(measuring) in said
  machines = json.loads(measuring.read_text())["machines"]
  entries = machines[conv_forms.machine()]
  assert sorted(key.split()[0] for key in entries) == ["forward", "input_grad", "weight_grad"]
  for key, entry in entries.items():
    times = entry["ms"]
    assert len(times) >= 3 and all(t > 0 for t in times.values()), (key, times)
    assert entry["form"] == conv_forms.pick(times, entry["incumbent"]), key
  # the fixed table's forms for this layer (3 input channels) defend their places
  assert {key.split()[0]: e["incumbent"] for key, e in entries.items()} == {
      "forward": "lax", "input_grad": "phase", "weight_grad": "phase_patches"}
  # Another process (a fresh start) reads the file and measures nothing.
  conv_forms.reset()
  monkeypatch.setattr(conv_forms, "_measure", lambda *a: pytest.fail("measured again"))
  again = _grads(x, w)
  for a, b in zip(again, measured):
    np.testing.assert_array_equal(a, b)
  # Choices stored in the file are the forms used: force a form there, the program follows.
  for key in entries:
    entries[key]["form"] = "lax"
  measuring.write_text(json.dumps({"format": conv_forms.CACHE_FORMAT, "machines": machines}))
  conv_forms.reset()
  with_lax = _grads(x, w)
  plain = jax.grad(lambda x, w: jnp.sum(jnp.sin(_plain(x, w, 2, 1))), (0, 1))(x, w)
  for a, b in zip(with_lax, plain):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("content", ["{not json", '{"format": 99, "machines": {}}', "[1, 2]"])
def test_a_corrupt_cache_file_is_ignored_with_a_warning_and_rewritten(measuring, content):
  measuring.write_text(content)
  x, w = _inputs(8, 3, 5, 4)
  with pytest.warns(RuntimeWarning, match="ignoring the convolution form cache"):
    grads = _grads(x, w)
  plain = jax.grad(lambda x, w: jnp.sum(jnp.sin(_plain(x, w, 2, 1))), (0, 1))(x, w)
  for a, b in zip(grads, plain):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  data = json.loads(measuring.read_text())
  assert data["format"] == conv_forms.CACHE_FORMAT
  assert len(data["machines"][conv_forms.machine()]) == 3


def test_pick_keeps_the_incumbent_unless_a_challenger_is_clearly_faster():
  assert conv_forms.pick({"lax": 1.04, "phase": 1.0}, "lax") == "lax"
  assert conv_forms.pick({"lax": 1.2, "phase": 1.0, "patches": 1.1}, "lax") == "phase"
  assert conv_forms.pick({"lax": 1.0, "phase": 2.0}, "phase") == "lax"


def test_the_cpu_is_named_with_its_family_and_model():
  """Two chips a virtual machine names alike ("AMD EPYC": Zen 3 with AVX2, Zen 4 with AVX-512)
  get different cache keys; only the first processor's block is read."""
  block = "processor\t: {p}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: {m}\n" \
          "model name\t: AMD EPYC\nflags\t\t: fpu avx2\n\n"
  zen3 = block.format(p=0, m=1) + block.format(p=1, m=99)
  assert conv_forms.cpu_model(zen3) == "AMD EPYC (family 25 model 1)"
  assert conv_forms.cpu_model(block.format(p=0, m=17)) == "AMD EPYC (family 25 model 17)"
  assert conv_forms.cpu_model("model name\t: Some CPU\n") == "Some CPU"


def test_settings_and_backends(monkeypatch):
  fake = {"lax": None, "phase": None, "subpixel": None}
  operands = (jax.ShapeDtypeStruct((2, 4, 4, 8), jnp.float32),) * 2
  monkeypatch.setattr(conv_forms, "_measure", lambda *a: pytest.fail("measured"))
  monkeypatch.setenv(conv_forms.MODE_VARIABLE, "fixed")
  assert conv_forms.choose("input_grad", fake, "subpixel", operands, ()) == "subpixel"
  monkeypatch.setenv(conv_forms.MODE_VARIABLE, "lax")
  assert conv_forms.choose("input_grad", fake, "subpixel", operands, ()) == "lax"
  # On accelerators the fixed table is XLA's own convolutions.
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setenv(conv_forms.MODE_VARIABLE, "fixed")
  assert conv_forms.choose("input_grad", fake, "subpixel", operands, ()) == "lax"
  monkeypatch.setenv(conv_forms.MODE_VARIABLE, "fast")
  with pytest.raises(ValueError, match="JAXGEN_CONV_FORMS='fast'.*measure, fixed, lax"):
    conv_forms.choose("input_grad", fake, "subpixel", operands, ())


def test_measurement_on_an_accelerator_defends_xla_s_own_convolutions(monkeypatch, tmp_path):
  """Where XLA autotunes convolutions itself, a jaxgen form must measure faster to be used."""
  monkeypatch.setenv(conv_forms.MODE_VARIABLE, "measure")
  monkeypatch.setenv(conv_forms.CACHE_VARIABLE, str(tmp_path / "c.json"))
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  seen = []
  monkeypatch.setattr(conv_forms, "_time", lambda candidates, operands: (
      seen.append(sorted(candidates)) or {"lax": 1.0, "subpixel": 0.97, "phase": 1.5}))
  conv_forms.reset()
  operands = (jax.ShapeDtypeStruct((2, 4, 4, 8), jnp.float32),) * 2
  fake = {"lax": None, "phase": None, "subpixel": None}
  assert conv_forms.choose("input_grad", fake, "subpixel", operands, (2, 1)) == "lax"
  assert seen == [["lax", "phase", "subpixel"]]
  conv_forms.reset()


def test_the_xla_flag_is_chosen_by_two_probe_processes_once(tmp_path, monkeypatch):
  monkeypatch.setenv(conv_forms.CACHE_VARIABLE, str(tmp_path / "c.json"))
  calls = []
  times = {"with": 1.0, None: 0.9}
  monkeypatch.setattr(conv_forms, "_probe",
                      lambda flag, args: calls.append(flag) or times["with" if flag else None])
  assert conv_forms.flag_choice("--some_flag") is False  # 10% faster without: dropped
  assert calls == ["--some_flag", None]
  assert conv_forms.flag_choice("--some_flag") is False  # from the file, no probe
  assert len(calls) == 2
  times[None] = 0.97  # within the margin: the flag (the incumbent) stays
  assert conv_forms.flag_choice("--other_flag") is True
  # a failed probe keeps the flag and is not remembered
  times[None] = None
  assert conv_forms.flag_choice("--third_flag") is True
  entries = json.loads((tmp_path / "c.json").read_text())["machines"]
  assert sorted(k.split("choice of ")[1] for k in entries) == ["--other_flag", "--some_flag"]


def test_the_probe_step_runs_in_a_fresh_process_with_the_flag_given():
  seconds = conv_forms._probe("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
                              ("16", "2", "4", "1"))
  assert seconds is not None and 0 < seconds < 5


@pytest.mark.parametrize("use", [False, True])
def test_configure_cpu_follows_the_measured_flag_answer(tmp_path, monkeypatch, use):
  monkeypatch.setenv(conv_forms.CACHE_VARIABLE, str(tmp_path / "c.json"))
  monkeypatch.setenv(conv_forms.MODE_VARIABLE, "measure")
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/nonexistent")
  monkeypatch.setattr(conv_forms, "accelerator_expected", lambda: False)
  monkeypatch.setattr(conv_forms, "_probe", lambda *a: pytest.fail("probed again"))
  conv_forms._write(conv_forms._flag_machine(layers._CPU_FLAG), "choice",
                    {"use": use, "probe_s": {"with": 1.0, "without": 1.0}})
  if jax.__version__ != "0.10.2":
    assert layers.configure_cpu() is False
    return
  assert layers.configure_cpu() is use
  assert (layers._CPU_FLAG in os.environ["XLA_FLAGS"]) is use
  monkeypatch.setenv(conv_forms.MODE_VARIABLE, "lax")
  monkeypatch.setenv("XLA_FLAGS", "")
  assert layers.configure_cpu() is False


def test_an_accelerator_is_recognised_without_starting_a_backend(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
  assert conv_forms.accelerator_expected()
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert not conv_forms.accelerator_expected()
