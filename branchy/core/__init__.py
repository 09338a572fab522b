"""The ground floor of ``branchy``: registries, configuration (dataclasses, YAML and argparse from one
definition), paths and setup errors, one atomic writer, standard JSON, fault points for tests, the torch
device a name asks for, whether a progress bar shows. Needs no torch."""
from .atomic import atomic_path, atomic_write
from .config import (ConfigError, add_arguments, check_int, check_name, check_number, coerce_value, did_you_mean,
                     from_arguments, from_mapping, is_int, is_real, read_yaml, setting, to_plain)
from .device import DEVICES, check_device, resolve_device
from .extras import MissingExtraError, check_extra, extra_hint, require_extra
from .faults import point
from .header import check_version
from .jsonio import NONFINITE, json_float, json_safe, read_json_object, write_json
from .lazy import lazy_exports
from .options import OptionError, option_hints, typed_options
from .paths import SetupError, check_writable
from .progress import show_progress
from .registry import Registry, UnknownNameError

__all__ = ["DEVICES", "NONFINITE", "add_arguments", "atomic_path", "atomic_write", "check_device", "check_int",
           "check_name", "check_number", "check_version", "check_writable", "coerce_value", "ConfigError",
           "did_you_mean", "extra_hint", "from_arguments", "from_mapping", "is_int", "is_real", "json_float",
           "json_safe", "lazy_exports", "MissingExtraError", "option_hints", "OptionError", "point",
           "read_json_object", "read_yaml", "Registry", "require_extra", "check_extra",
           "resolve_device", "setting", "SetupError", "show_progress", "to_plain", "typed_options", "UnknownNameError",
           "write_json"]
