"""Command-line flags generated from an experiment's frozen settings dataclass.

    @dataclasses.dataclass(frozen=True)
    class Config:
      batch_size: int = setting(64, "images per batch")

`define_flags(Config)` defines --batch_size; `from_flags(Config)` builds the dataclass from the
parsed flags, so the dataclass's own checks (`__post_init__`) judge command-line input and tests
alike.
"""

import dataclasses
import sys

from absl import flags

_DEFINE = {int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string,
           bool: flags.DEFINE_bool}


def setting(default, help: str):
  """A dataclass field with a default and the help text of its flag."""
  return dataclasses.field(default=default, metadata={"help": help})


def define_flags(config_cls, flag_values=flags.FLAGS) -> None:
  # Listed by --help as the program's own flags (absl files flags under the defining module,
  # and --help shows the main program's).
  module = sys.argv[0] if config_cls.__module__ == "__main__" else config_cls.__module__
  for field in dataclasses.fields(config_cls):
    _DEFINE[field.type](field.name, field.default, field.metadata.get("help", field.name),
                        flag_values=flag_values, module_name=module)


def from_flags(config_cls, flag_values=flags.FLAGS):
  return config_cls(**{f.name: flag_values[f.name].value for f in dataclasses.fields(config_cls)})
