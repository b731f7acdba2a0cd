"""Many SIGKILLs at random moments of one run, then the run finished and compared to the bit with
an uninterrupted one: the long form of tests/test_reliability.py's kill test (not part of the
suite: it takes minutes).

    python tests/kill_soak.py --program=wgan_gp --kills=20
"""

import argparse
import os
import random
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import chex  # noqa: E402
import test_reliability as r  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--program", default="wgan_gp", choices=sorted(r.FLAGS))
  parser.add_argument("--kills", type=int, default=20)
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  rng = random.Random(args.seed)
  extra = [f"--steps={args.steps}", "--checkpoint_every=1", "--seed=3"]
  with tempfile.TemporaryDirectory() as tmp:
    env = {**os.environ, "JAXGEN_COMPILATION_CACHE": os.path.join(tmp, "cache"),
           "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "true", "XLA_FLAGS": ""}
    straight, killed = os.path.join(tmp, "straight"), os.path.join(tmp, "killed")
    assert r.run_to_end(args.program, straight, env, *extra).returncode == 0
    tried, at, verified = 0, [], 0
    while tried < args.kills:
      process = r.start(args.program, killed, env, *extra)
      # anywhere from start-up (imports, compilation, restore) to the middle of training
      time.sleep(rng.uniform(0.0, 12.0))
      if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        tried += 1
        at.append(r.logged_steps(killed))
      process.wait()
      process.stderr.close()
      if tried == args.kills or r.latest_step_of(killed) == args.steps:
        verified += check(args, env, straight, killed, extra)
    print(f"{args.program}: {tried} SIGKILLs at logged steps {at}; {verified} killed run(s) "
          f"finished with parameters equal to the bit to an uninterrupted run's, and the same "
          f"metrics.jsonl")


def check(args, env, straight, killed, extra) -> int:
  import shutil
  done = r.run_to_end(args.program, killed, env, *extra)
  assert done.returncode == 0, done.stderr[-2000:]
  tree, meta, step = r.final_tree(killed)
  expected, expected_meta, _ = r.final_tree(straight)
  chex.assert_trees_all_equal(tree, expected)
  assert step == args.steps and meta == expected_meta and r.losses(killed) == r.losses(straight)
  shutil.rmtree(killed)  # the next kills start a fresh run
  return 1


if __name__ == "__main__":
  main()
