"""Which form each convolution map takes, chosen by measurement on the machine that runs it.

`jaxgen.layers` writes each of a convolution's three linear maps (forward, input gradient,
weight gradient) in several equivalent forms: XLA's own convolution ("lax"), a matrix product,
a stride-1 convolution of the space-to-depth input, one convolution per output phase, im2col
patches. Which is fastest depends on the machine (AVX2 or AVX-512, core count, CPU or GPU), the
layer's shape and the dtype. So the first time a map of a given shape is traced, every candidate
is compiled and timed on the default device (a few milliseconds each, interleaved rounds, the
minimum kept), and the winner is kept in a small JSON cache file keyed by the machine (backend,
device kind, CPU model and core count, jax version, the XLA:CPU convolution flag) and the shape,
the way GPU libraries autotune convolutions. Later traces, in this process or any other on the same
machine, read the choice from the file.

Settings (environment variables, read when a map is first traced, and by
`layers.configure_cpu` for the XLA:CPU flag, whose choice `flag_choice` measures):
  JAXGEN_CONV_FORMS  measure  the default: measured choice, cached
                     fixed    the forms chosen once on the project's 2-core AVX2 machines (the
                              table in `jaxgen.layers`): a whole-window kernel as a matrix product,
                              strided input gradients per output phase (the space-to-depth form
                              with 1-4 channels), weight gradients over 1-4 input channels as
                              im2col matrix products, XLA's convolutions otherwise; on GPUs and
                              other accelerators "lax" everywhere
                     lax      XLA's own convolutions for every map: what JAX's autodiff computes
  JAXGEN_CONV_CACHE  the cache file (default ~/.cache/jaxgen/conv_forms.json)

On accelerators the incumbent is "lax" (XLA autotunes its GPU convolutions itself): another form
is used there only where it measured faster. Everywhere a challenger must beat the incumbent by
`MARGIN` to replace it, so timing noise does not flip choices. A cache file that cannot be read
is ignored with a warning and rewritten.

The forms compute the same maps; they differ in float rounding only. A run is bitwise repeatable
on one machine as long as its cache file stays; `fixed` or `lax` make the choice independent of
measurement.
"""

import contextlib
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
import warnings
from typing import Callable, Dict, Optional, Sequence

import jax
import numpy as np

MODES = ("measure", "fixed", "lax")
MODE_VARIABLE = "JAXGEN_CONV_FORMS"
CACHE_VARIABLE = "JAXGEN_CONV_CACHE"
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "jaxgen", "conv_forms.json")
CACHE_FORMAT = 1
# A challenger replaces the incumbent form only when at least this much faster.
MARGIN = 0.05
# Timing of one candidate: interleaved rounds until every candidate ran ROUNDS times and
# MIN_SECONDS passed (at most MAX_ROUNDS); the minimum of its rounds is its time.
ROUNDS, MAX_ROUNDS, MIN_SECONDS = 3, 15, 0.05

_lock = threading.RLock()
_chosen: Dict[str, str] = {}  # this process's choices: key -> form
_forced: Dict[str, str] = {}  # map name -> form, from `forced`
_file_entries: Optional[dict] = None  # the cache file's entries for this machine, once read
_announced: list = []  # non-empty once this process said that it measures
_machine: Optional[str] = None
# What measuring cost this process: shapes measured and seconds spent (compiling and timing).
measured = {"shapes": 0, "seconds": 0.0}


def mode() -> str:
  """The form setting in force ($JAXGEN_CONV_FORMS, default "measure")."""
  value = os.environ.get(MODE_VARIABLE, "measure") or "measure"
  if value not in MODES:
    raise ValueError(f"{MODE_VARIABLE}={value!r} is not a convolution form setting; use one of "
                     f"{', '.join(MODES)}")
  return value


def cache_path() -> str:
  return os.environ.get(CACHE_VARIABLE) or DEFAULT_CACHE


def cpu_model(cpuinfo: str = None) -> str:
  """The CPU's model name with its family and model numbers (/proc/cpuinfo on Linux), as specific
  as the system tells: virtual machines often name only "AMD EPYC" for chips as different as Zen
  3 (AVX2) and Zen 4 (AVX-512), so the numbers keep their measurements apart."""
  if cpuinfo is None:
    try:
      with open("/proc/cpuinfo") as f:
        cpuinfo = f.read()
    except OSError:
      cpuinfo = ""
  fields = {}
  for line in cpuinfo.splitlines():
    if not line.strip():
      break  # the first processor's block
    name, _, value = line.partition(":")
    fields.setdefault(name.strip(), value.strip())
  if "model name" not in fields:
    return platform.processor() or platform.machine() or "unknown"
  numbers = [f"{k} {fields[v]}" for k, v in (("family", "cpu family"), ("model", "model"))
             if v in fields]
  return fields["model name"] + (f" ({' '.join(numbers)})" if numbers else "")


def cpu_has_avx512() -> bool:
  try:
    with open("/proc/cpuinfo") as f:
      return any(line.startswith("flags") and " avx512f" in line for line in f)
  except OSError:
    return False


def _host() -> str:
  """The CPU, its core count and the jax version, as the cache file's keys name them."""
  return (f"{cpu_model()}{' avx512' if cpu_has_avx512() else ''}/{os.cpu_count()} cpus/"
          f"jax {jax.__version__}")


def machine() -> str:
  """What a measured choice is valid for: backend, device, CPU, cores, jax, XLA:CPU flag, and
  whether host memory is kept for reuse (`jaxgen.host_memory`: it changes what large
  intermediates cost)."""
  global _machine
  if _machine is None:
    from jaxgen import host_memory
    device = jax.devices()[0]
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "ynn" in f)
    kept = "/host memory kept" if host_memory.kept() else ""
    _machine = f"{device.platform}/{device.device_kind}/{_host()}/{flags or 'no ynn flag'}{kept}"
  return _machine


def _read_file() -> dict:
  """This machine's entries of the cache file ({} when absent; a bad file warns once)."""
  global _file_entries
  if _file_entries is None:
    entries = _load(cache_path()).get(machine())
    _file_entries = entries if isinstance(entries, dict) else {}
  return _file_entries


def _load(path: str) -> dict:
  """The cache file's {machine: {key: entry}}, or {} (with a warning) when it cannot be used."""
  try:
    with open(path) as f:
      data = json.load(f)
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or \
        not isinstance(data.get("machines"), dict):
      raise ValueError(f"not a format-{CACHE_FORMAT} jaxgen convolution form cache")
    return data["machines"]
  except FileNotFoundError:
    return {}
  except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
    warnings.warn(f"jaxgen: ignoring the convolution form cache {path} ({e}); forms are measured "
                  f"again and the file rewritten", RuntimeWarning, stacklevel=2)
    return {}


def _write(machine_key: str, key: str, entry: dict) -> None:
  """Adds `entry` under `machine_key` to the cache file, merged with what other processes wrote,
  atomically."""
  path = cache_path()
  try:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # a bad file already warned when read
      machines = _load(path)
    if not isinstance(machines.get(machine_key), dict):
      machines[machine_key] = {}
    machines[machine_key][key] = entry
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".conv_forms.")
    with os.fdopen(fd, "w") as f:
      json.dump({"format": CACHE_FORMAT, "machines": machines}, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
  except OSError as e:
    logging.warning("jaxgen: could not write the convolution form cache %s: %s", path, e)


@contextlib.contextmanager
def forced(forms: Dict[str, str]):
  """Within the block, traced maps take the given forms ({map name: form}) where they apply;
  for tests and comparisons. Maps traced before the block keep their programs."""
  with _lock:
    before = dict(_forced)
    _forced.update(forms)
  try:
    yield
  finally:
    with _lock:
      _forced.clear()
      _forced.update(before)


def reset() -> None:
  """Forgets this process's choices and the cache file's contents read so far (tests)."""
  global _file_entries, _machine
  with _lock:
    _chosen.clear()
    _announced.clear()
    _file_entries = None
    _machine = None


def choose(name: str, candidates: Dict[str, Callable], fixed: str, operands: Sequence,
           params: tuple) -> str:
  """The form of map `name` for these operand shapes: one of `candidates` (form -> function of
  the operands, all computing the same map). `fixed` is the CPU table's form; `params` the map's
  static arguments (stride, padding, sizes), part of the key."""
  forced_form = _forced.get(name)
  if forced_form in candidates:
    return forced_form
  setting = mode()
  cpu = jax.default_backend() == "cpu"
  incumbent = fixed if cpu else "lax"
  if setting == "lax" or (setting == "fixed" and not cpu):
    return "lax"
  if setting == "fixed" or len(candidates) == 1:
    return incumbent
  shapes = " ".join(f"{tuple(a.shape)}{np.dtype(a.dtype).name}" for a in operands)
  key = f"{name} {shapes} {params}"
  with _lock:
    form = _chosen.get(key)
    if form is None:
      entry = _read_file().get(key)
      if not (isinstance(entry, dict) and entry.get("form") in candidates):
        if not _announced:
          _announced.append(True)
          print(f"jaxgen: timing convolution forms for layer shapes new to this machine (once; "
                f"kept in {cache_path()}; {MODE_VARIABLE}=fixed skips it)", file=sys.stderr,
                flush=True)
        entry = _measure(candidates, incumbent, operands)
        _read_file()[key] = entry
        _write(machine(), key, entry)
        logging.info("jaxgen: %s: %s (ms: %s)", key, entry["form"], entry["ms"])
      form = _chosen[key] = entry["form"]
  return form


def _measure(candidates: Dict[str, Callable], incumbent: str, operands: Sequence) -> dict:
  """The cache entry of a measured choice: the winner, the incumbent and every form's time."""
  start = time.perf_counter()
  seconds = _time(candidates, operands)
  measured["shapes"] += 1
  measured["seconds"] += time.perf_counter() - start
  return {"form": pick(seconds, incumbent), "incumbent": incumbent,
          "ms": {form: round(t * 1e3, 4) for form, t in seconds.items()}}


def pick(times: Dict[str, float], incumbent: str) -> str:
  """The fastest form, unless the incumbent is within `MARGIN` of it."""
  fastest = min(times, key=times.get)
  if incumbent in times and times[incumbent] <= times[fastest] * (1 + MARGIN):
    return incumbent
  return fastest


def _time(candidates: Dict[str, Callable], operands: Sequence) -> Dict[str, float]:
  """Compiles every candidate for random operands of the same shapes and times them on the
  default device in interleaved rounds: {form: fastest round's seconds}."""
  rng = np.random.default_rng(0)
  with jax.ensure_compile_time_eval():
    args = [jax.numpy.asarray(rng.standard_normal(a.shape, np.float32), a.dtype)
            for a in operands]
    compiled = {form: jax.jit(fn).lower(*args).compile() for form, fn in candidates.items()}
    for fn in compiled.values():
      jax.block_until_ready(fn(*args))
    best = {form: float("inf") for form in compiled}
    start, rounds = time.perf_counter(), 0
    while rounds < ROUNDS or (time.perf_counter() - start < MIN_SECONDS and rounds < MAX_ROUNDS):
      for form, fn in compiled.items():
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best[form] = min(best[form], time.perf_counter() - t)
      rounds += 1
  return best


# --- The XLA:CPU flag for single convolutions -------------------------------------------------
# XLA_FLAGS take effect only when JAX starts its CPU backend, so the flag cannot be timed inside
# one process: `flag_choice` times a probe step in two fresh processes, one with the flag and one
# without, once per machine, and keeps the answer in the same cache file.


def _flag_machine(flag: str) -> str:
  # The probe keeps host memory as the programs do (`jaxgen.host_memory`); choices from probes
  # before that have another key and are measured again.
  return f"cpu/{_host()}/host memory kept/choice of {flag}"


def accelerator_expected() -> bool:
  """True when JAX will start a GPU or TPU backend here (from $JAX_PLATFORMS or an installed
  plugin), judged without starting any backend."""
  import importlib.util
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return "cpu" not in platforms.split(",")[0]
  return any(importlib.util.find_spec(name) is not None for name in (
      "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm6_plugin", "jax_rocm7_plugin",
      "libtpu"))


def flag_choice(flag: str, probe_args: Sequence[str] = ()) -> bool:
  """Whether XLA:CPU runs jaxgen's convolutions faster with `flag` in XLA_FLAGS on this machine
  (measured once, then read from the cache file). The flag is the incumbent: going without it
  must be `MARGIN` faster. Call before JAX starts a backend; it starts none in this process."""
  key = _flag_machine(flag)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # a bad file warns when the forms read it
    entries = _load(cache_path()).get(key)
    entry = entries.get("choice") if isinstance(entries, dict) else None
  if isinstance(entry, dict) and isinstance(entry.get("use"), bool):
    return entry["use"]
  print(f"jaxgen: timing a probe step with and without {flag} in two processes, once for this "
        f"machine (about 30 s; {MODE_VARIABLE}=fixed skips it)", file=sys.stderr, flush=True)
  seconds = {"with": _probe(flag, probe_args), "without": _probe(None, probe_args)}
  if None in seconds.values():
    return True  # a failed probe keeps the flag and is tried again next time
  use = pick(seconds, "with") == "with"
  logging.info("jaxgen: %s: %s (probe step s: %s)", key, "used" if use else "not used", seconds)
  _write(key, "choice", {"use": use, "probe_s": seconds})
  return use


def _probe(flag: Optional[str], probe_args: Sequence[str]) -> Optional[float]:
  """Seconds of the probe step in a fresh process with `flag` (or without) in XLA_FLAGS."""
  import subprocess
  flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "ynn" not in f)
  env = dict(os.environ, XLA_FLAGS=f"{flags} {flag or ''}".strip(), JAX_PLATFORMS="cpu")
  env[MODE_VARIABLE] = "fixed"
  try:
    out = subprocess.run([sys.executable, "-m", "jaxgen.conv_forms", *probe_args], env=env,
                         capture_output=True, text=True, timeout=600, check=True).stdout
    return float(out.split()[-1])
  except (subprocess.SubprocessError, OSError, ValueError, IndexError) as e:
    logging.warning("jaxgen: the XLA flag probe failed (%s); keeping the flag", e)
    return None


def probe_step_seconds(image_size: int = 32, batch: int = 64, width: int = 64,
                       repeats: int = 5) -> float:
  """The probe the flag choice times: one gradient of the WGAN-GP critic loss (forward, input
  and weight gradients, the penalty's double backward) and one generator gradient, with the
  benchmark's DCGAN networks; the fastest of `repeats`."""
  import jax.numpy as jnp
  from jaxgen import dcgan, wgan_gp
  generator = dcgan.Generator(image_size=image_size, channels=1, width=width)
  critic = dcgan.Critic(image_size=image_size, width=width)
  key = jax.random.PRNGKey(0)
  z = jax.random.normal(key, (batch, 1, 1, 100))
  g_vars = generator.init(key, z, train=True)
  real = jax.random.normal(key, (batch, image_size, image_size, 1))
  d_params = critic.init(key, real)["params"]
  eps = jax.random.uniform(key, (batch, 1, 1, 1))

  @jax.jit
  def step(d_params, g_vars):
    def g_loss(params):
      fake, _ = generator.apply({**g_vars, "params": params}, z, train=True,
                                mutable=["batch_stats"])
      return -jnp.mean(critic.apply({"params": d_params}, fake))
    fake = generator.apply(g_vars, z, train=True, mutable=["batch_stats"])[0]
    d_grads = jax.grad(lambda p: wgan_gp.critic_loss(p, real, fake, eps, critic=critic,
                                                     gp_weight=10.0)[0])(d_params)
    return d_grads, jax.grad(g_loss)(g_vars["params"])

  jax.block_until_ready(step(d_params, g_vars))
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(step(d_params, g_vars))
    best = min(best, time.perf_counter() - t)
  return best


if __name__ == "__main__":
  from jaxgen import host_memory
  host_memory.keep_freed_memory()  # as the programs run
  sizes = [int(a) for a in sys.argv[1:]]
  print(probe_step_seconds(*sizes))
