"""The device inventory: ``devices.yaml`` loaded into validated dataclasses.

Every entry has ``transport`` (local, ssh or adb) and ``runtime`` (onnxruntime or tflite, or a
list of both: ``runtime: [onnxruntime, tflite]`` measures both by default, into one LUT).
Field names are stable; scripts rely on them.  Every error names the file, the device and
the field.  Example::

    devices:
      local:
        transport: local
        runtime: onnxruntime
        threads: 1
      rpi4:
        transport: ssh
        host: rpi4.lan
        user: pi
        key_file: ~/.ssh/id_ed25519
        known_hosts: ~/.ssh/known_hosts
        python: python3
        runtime: tflite
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from supernet.safeyaml import load_unique, yaml_error_line

from .lut import finite
from .runner import parse_cpu_mask

TRANSPORTS = ("local", "ssh", "adb")
RUNTIMES = ("onnxruntime", "tflite")
DEFAULT_DEVICES_FILE = Path("devices.yaml")
SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")


class DeviceConfigError(ValueError):
    """A devices.yaml problem; the message names file, device and field."""


@dataclass(frozen=True)
class Device:
    """One device of the inventory (see the module docstring and devices.yaml)."""

    name: str
    transport: str
    runtime: str
    description: str = ""
    threads: int = 1
    warmup: int = 10              # untimed runs before timing
    repeats: int = 50             # at least this many timed runs ...
    min_time_s: float = 0.2       # ... and at least this long
    max_time_s: float = 10.0      # stop timing after this long whatever the count
    sweeps: int = 2               # the blocks timed this often, in turn, each time for 1/sweeps of the
                                  # above; a row is its fastest sweep (profiler.measure.sweep_request)
    timeout_s: float = 120.0      # per block, load + warm-up + timing
    retries: int = 2              # transport errors: reconnect and retry this often
    max_attempts: int = 3         # a block that failed this often is not tried again
    workdir: str = ""             # remote work directory (ssh, adb); cleaned up at the end
    providers: tuple[str, ...] = ()  # onnxruntime execution providers, in order
    # ssh
    host: str = ""
    port: int = 22
    user: str = ""
    key_file: str = ""
    known_hosts: str = ""
    insecure_accept_new_host_key: bool = False
    password_env: str = ""        # name of an environment variable holding a password
    python: str = ""              # interpreter that runs the runner (local: this one)
    connect_timeout_s: float = 10.0
    # adb
    serial: str = ""
    benchmark_model: str = ""     # path of TFLite's benchmark_model on the device
    cpu_mask: str = ""            # CPUs the runner is pinned to: a hex mask as taskset takes it ("f0"), or "last"
    adb: str = "adb"              # the adb client
    # every runtime of the entry (``runtime: [onnxruntime, tflite]``); ``runtime`` is the first
    runtimes: tuple[str, ...] = ()

    @property
    def all_runtimes(self) -> tuple[str, ...]:
        """The runtimes ``profiler.run`` and ``profiler.validate`` measure by default."""
        return self.runtimes or (self.runtime,)

    def expand(self, value: str) -> str:
        return os.path.expanduser(os.path.expandvars(value)) if value else value


_FIELDS = {f.name: f for f in fields(Device)}
_INT = {"threads", "warmup", "repeats", "sweeps", "retries", "max_attempts", "port"}
_FLOAT = {"min_time_s", "max_time_s", "timeout_s", "connect_timeout_s"}
MAX_SECONDS = 1e6  # about 11 days: every _FLOAT field is a duration
_BOOL = {"insecure_accept_new_host_key"}
_POSITIVE = {"threads", "repeats", "sweeps", "max_attempts", "port", "timeout_s", "max_time_s", "connect_timeout_s"}
_REQUIRED_BY_TRANSPORT = {"local": (), "ssh": ("host", "user"), "adb": ("serial",)}


def _coerce(file: Path, name: str, key: str, value: Any) -> Any:
    where = f"{file}: device {name!r}: field {key!r}"
    if key in _BOOL:
        if not isinstance(value, bool):
            raise DeviceConfigError(f"{where}: must be true or false, got {value!r}")
        return value
    if key in _INT:
        if not isinstance(value, int) or isinstance(value, bool):
            raise DeviceConfigError(f"{where}: must be an integer, got {value!r}")
        if key in _POSITIVE and value < 1 or value < 0:
            raise DeviceConfigError(f"{where}: must be positive, got {value!r}")
        if value > 1 << 31:
            raise DeviceConfigError(f"{where}: at most {1 << 31}, got {str(value)[:40]}")
        return value
    if key in _FLOAT:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not finite(value):
            raise DeviceConfigError(f"{where}: must be a finite number, got {value!r}")
        if value < 0 or (key in _POSITIVE and value == 0):
            raise DeviceConfigError(f"{where}: must be positive, got {value!r}")
        if value > MAX_SECONDS:  # beyond what a thread or socket wait accepts (OverflowError)
            raise DeviceConfigError(f"{where}: at most {MAX_SECONDS:g} seconds, got {value!r}")
        return float(value)
    if key == "runtime":  # one name, a comma list or a YAML list; a tuple here (parse_device checks the names)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise DeviceConfigError(f"{where}: must be a runtime name or a list of them ({', '.join(RUNTIMES)})")
        return tuple(value)
    if key == "providers":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DeviceConfigError(f"{where}: must be a list of execution provider names")
        return tuple(value)
    if key == "cpu_mask" and not isinstance(value, str):  # YAML reads 0x10 as 16 and 010 as 8: not the mask written
        raise DeviceConfigError(f"{where}: write the CPU mask as a quoted string (e.g. \"c\" or \"0x10\"), "
                                f"got the number {value!r}")
    if key == "password":
        raise DeviceConfigError(f"{where}: passwords are never stored in files; name an environment variable with password_env")
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise DeviceConfigError(f"{where}: must be a string, got {value!r}")
    return str(value)


def check_device_name(name: str, where: str = "") -> str:
    """A device name becomes a file name (``luts/<name>.csv``): only letters, digits, ``.``,
    ``_`` and ``-``, not starting with a dot, at most 64 characters.  Raises DeviceConfigError."""
    if not SAFE_NAME.fullmatch(name):
        raise DeviceConfigError(f"{where}device name {name[:80]!r} is not allowed: use letters, digits, '.', '_' "
                                f"and '-' (at most 64, not starting with '.'); it names the LUT file")
    return name


def parse_device(file: Path, name: str, entry: Any) -> Device:
    check_device_name(name, f"{file}: ")
    if not isinstance(entry, dict):
        raise DeviceConfigError(f"{file}: device {name!r}: expected a mapping of fields, got {type(entry).__name__}")
    values: dict[str, Any] = {"name": name}
    for key, value in entry.items():
        key = str(key)
        if key == "name":
            continue
        if (key not in _FIELDS and key != "password") or key == "runtimes":  # runtimes: only through runtime
            known = ", ".join(sorted(k for k in _FIELDS if k not in ("name", "runtimes")))
            raise DeviceConfigError(f"{file}: device {name!r}: unknown field {key!r} (known: {known})")
        values[key] = _coerce(file, name, key, value)
    for key in ("transport", "runtime"):
        if key not in values:
            raise DeviceConfigError(f"{file}: device {name!r}: field {key!r} is required")
    if values["transport"] not in TRANSPORTS:
        raise DeviceConfigError(
            f"{file}: device {name!r}: field 'transport': {values['transport']!r} is not one of {', '.join(TRANSPORTS)}"
        )
    runtimes = values["runtime"]
    for rt in runtimes:
        if rt not in RUNTIMES:
            raise DeviceConfigError(f"{file}: device {name!r}: field 'runtime': {rt!r} is not one of {', '.join(RUNTIMES)}")
    if not runtimes or len(set(runtimes)) != len(runtimes):
        raise DeviceConfigError(f"{file}: device {name!r}: field 'runtime': name one or more different runtimes "
                                f"({', '.join(RUNTIMES)}), got {list(runtimes)}")
    values["runtime"], values["runtimes"] = runtimes[0], runtimes
    for key in _REQUIRED_BY_TRANSPORT[values["transport"]]:
        if not values.get(key):
            raise DeviceConfigError(f"{file}: device {name!r}: field {key!r} is required for transport {values['transport']}")
    where = f"{file}: device {name!r}"
    if values["transport"] == "adb":
        if not values.get("benchmark_model") and not values.get("python"):
            raise DeviceConfigError(f"{where}: field 'benchmark_model' (TFLite's benchmark tool on the phone) or "
                                    f"'python' (a Python on the device) is required for transport adb")
        if values.get("benchmark_model") and values["runtimes"] != ("tflite",):
            raise DeviceConfigError(f"{where}: field 'runtime': benchmark_model measures tflite models, "
                                    f"not {', '.join(r for r in values['runtimes'] if r != 'tflite')}")
        if values.get("benchmark_model") and values.get("cpu_mask") == "last":
            raise DeviceConfigError(f"{where}: field 'cpu_mask': last needs the pushed runner ('python'); "
                                    f"benchmark_model runs under taskset, which takes a hexadecimal mask like c")
        if any(c.isspace() for c in values["serial"]):
            raise DeviceConfigError(f"{where}: field 'serial': must not contain spaces, got {values['serial']!r}")
    if values.get("cpu_mask") and values["cpu_mask"] != "last":
        try:
            parse_cpu_mask(values["cpu_mask"])  # the runner's own reading of it
        except ValueError as exc:
            raise DeviceConfigError(f"{where}: field 'cpu_mask': {exc}; write a hexadecimal CPU mask naming at "
                                    f"least one CPU, like f0, or last") from None
    if "port" in values and values["port"] > 65535:
        raise DeviceConfigError(f"{where}: field 'port': must be at most 65535, got {values['port']}")
    if values.get("password_env") and not values["password_env"].replace("_", "a").isalnum():
        raise DeviceConfigError(f"{where}: field 'password_env': must name an environment variable, "
                                f"got {values['password_env']!r}")
    for key in ("workdir",):
        if values.get(key) and values["transport"] != "local" and values[key].strip("/") == "":
            raise DeviceConfigError(f"{where}: field {key!r}: must not be the root folder")
    if values.get("min_time_s", 0.2) > values.get("max_time_s", 10.0):
        raise DeviceConfigError(f"{file}: device {name!r}: field 'min_time_s' is larger than max_time_s")
    return Device(**values)


def load_devices(path: Path | str = DEFAULT_DEVICES_FILE) -> dict[str, Device]:
    """All devices of an inventory file, by name."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DeviceConfigError(f"{path}: no such devices file (use --devices PATH)") from None
    except OSError as exc:
        raise DeviceConfigError(f"{path}: cannot read devices file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise DeviceConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        data = load_unique(text)
    except yaml.YAMLError as exc:
        line, problem = yaml_error_line(exc)
        raise DeviceConfigError(f"{path}{line}: malformed YAML: {problem}") from None
    if not isinstance(data, dict) or not isinstance(data.get("devices"), dict) or not data["devices"]:
        raise DeviceConfigError(f"{path}: expected a top-level 'devices:' mapping of device names to entries")
    extra = sorted(set(data) - {"devices"})
    if extra:
        raise DeviceConfigError(f"{path}: unknown top-level key(s) {', '.join(map(str, extra))} (expected only 'devices')")
    return {str(name): parse_device(path, str(name), entry) for name, entry in data["devices"].items()}


def select_devices(devices: dict[str, Device], spec: str, path: Path | str = DEFAULT_DEVICES_FILE) -> list[Device]:
    """Devices named by ``spec``: a name, a comma list, or ``all``."""
    names = list(devices) if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise DeviceConfigError("no device named (use --device NAME, a comma list, or all)")
    unknown = [n for n in names if n not in devices]
    if unknown:
        raise DeviceConfigError(
            f"{path}: unknown device {', '.join(map(repr, unknown))} (known: {', '.join(devices)})"
        )
    return [devices[n] for n in dict.fromkeys(names)]
