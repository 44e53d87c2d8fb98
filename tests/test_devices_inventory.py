"""devices.yaml: the shipped inventory parses, and every error names file, device and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from profiler.devices import DeviceConfigError, load_devices, parse_device, select_devices

REPO = Path(__file__).resolve().parents[1]


def test_shipped_inventory_has_the_documented_devices():
    devices = load_devices(REPO / "devices.yaml")
    assert list(devices)[0] == "local"
    assert {"local", "pixel1", "rpi4", "gpubox"} <= set(devices)
    p, r, g = devices["pixel1"], devices["rpi4"], devices["gpubox"]
    assert (p.transport, p.runtime, p.benchmark_model.endswith("benchmark_model")) == ("adb", "tflite", True) and p.serial
    assert (r.transport, r.host, r.user, r.python) == ("ssh", "rpi4.local", "pi", "/home/pi/hwnas-venv/bin/python")
    assert r.known_hosts and not r.insecure_accept_new_host_key
    assert g.providers[0] == "TensorrtExecutionProvider" and g.runtime == "onnxruntime"
    # this machine has both runtimes: `profiler.run --device local` measures both, into luts/local.csv
    loc = devices["local"]
    assert loc.runtime == "onnxruntime" and loc.all_runtimes == ("onnxruntime", "tflite") and p.all_runtimes == ("tflite",)


def test_runtime_lists_and_their_lut_paths():
    from profiler.measure import default_lut_path

    f = Path("lab/devices.yaml")
    for value in (["tflite", "onnxruntime"], "tflite, onnxruntime"):
        d = parse_device(f, "box", {"transport": "local", "runtime": value})
        assert (d.runtime, d.all_runtimes) == ("tflite", ("tflite", "onnxruntime"))
        assert default_lut_path(d, "onnxruntime") == default_lut_path(d, "tflite") == Path("luts/box.csv")
    one = parse_device(f, "one", {"transport": "local", "runtime": "tflite"})
    assert one.all_runtimes == ("tflite",) and default_lut_path(one, "onnxruntime") == Path("luts/one-onnxruntime.csv")


@pytest.mark.parametrize("entry, field", [
    ({"transport": "adb", "runtime": "tflite", "benchmark_model": "/x"}, "serial"),
    ({"transport": "adb", "runtime": "tflite", "serial": "S"}, "benchmark_model"),
    ({"transport": "adb", "runtime": "onnxruntime", "serial": "S", "benchmark_model": "/x"}, "runtime"),
    ({"transport": "adb", "runtime": "tflite", "serial": "a b", "benchmark_model": "/x"}, "serial"),
    ({"transport": "adb", "runtime": "tflite", "serial": "S", "benchmark_model": "/x", "cpu_mask": "big"}, "cpu_mask"),
    ({"transport": "local", "runtime": "onnxruntime", "cpu_mask": "0"}, "cpu_mask"),
    ({"transport": "local", "runtime": "onnxruntime", "cpu_mask": 16}, "cpu_mask"),  # YAML's reading of 0x10
    ({"transport": "adb", "runtime": "tflite", "serial": "S", "benchmark_model": "/x", "cpu_mask": "last"}, "cpu_mask"),
    ({"transport": "ssh", "runtime": "onnxruntime", "host": "h", "user": "u", "cpu_mask": "0x"}, "cpu_mask"),
    ({"transport": "ssh", "runtime": "tflite", "host": "h"}, "user"),
    ({"transport": "ssh", "runtime": "tflite", "host": "h", "user": "u", "port": 70000}, "port"),
    ({"transport": "ssh", "runtime": "tflite", "host": "h", "user": "u", "password": "hunter2"}, "password"),
    ({"transport": "ssh", "runtime": "tflite", "host": "h", "user": "u", "password_env": "A B"}, "password_env"),
    ({"transport": "ssh", "runtime": "tflite", "host": "h", "user": "u", "workdir": "/"}, "workdir"),
    ({"transport": "ssh", "runtime": "tflite", "host": "h", "user": "u", "insecure_accept_new_host_key": "yes"},
     "insecure_accept_new_host_key"),
    ({"transport": "scp", "runtime": "tflite"}, "transport"),
    ({"transport": "local", "runtime": "onnxruntime", "sweeps": 0}, "sweeps"),
    ({"transport": "local", "runtime": "onnxruntime", "sweeps": 1.5}, "sweeps"),
    ({"transport": "local", "runtime": ["tflite", "tflite"]}, "runtime"),
    ({"transport": "local", "runtime": ["tflite", "tvm"]}, "runtime"),
    ({"transport": "local", "runtime": []}, "runtime"),
    ({"transport": "local", "runtime": {"a": 1}}, "runtime"),
    ({"transport": "local", "runtime": "onnxruntime", "runtimes": ["tflite"]}, "runtimes"),
    ({"transport": "adb", "runtime": ["tflite", "onnxruntime"], "serial": "S", "benchmark_model": "/x"}, "runtime"),
    ({"transport": "ssh", "runtime": "tflite", "host": "h", "user": "u", "hostname": "x"}, "hostname"),
])
def test_errors_name_file_device_and_field(entry, field):
    with pytest.raises(DeviceConfigError) as err:
        parse_device(Path("lab/devices.yaml"), "dev1", entry)
    msg = str(err.value)
    assert msg.startswith("lab/devices.yaml: device 'dev1'") and repr(field) in msg, msg


def test_password_is_never_accepted_and_says_what_to_do():
    with pytest.raises(DeviceConfigError, match="password_env"):
        parse_device(Path("d.yaml"), "rpi4", {"transport": "ssh", "runtime": "tflite", "host": "h", "user": "u",
                                              "password": "x"})


def test_malformed_yaml_names_the_line(tmp_path):
    f = tmp_path / "devices.yaml"
    f.write_text("devices:\n  a:\n    transport: local\n   runtime: [\n")
    with pytest.raises(DeviceConfigError, match=r"devices.yaml:\d+: malformed YAML"):
        load_devices(f)


def test_selection(tmp_path):
    devices = load_devices(REPO / "devices.yaml")
    assert [d.name for d in select_devices(devices, "all")] == list(devices)
    assert [d.name for d in select_devices(devices, "rpi4, pixel1,rpi4")] == ["rpi4", "pixel1"]
    with pytest.raises(DeviceConfigError, match="unknown device 'pixel9'.*known: local"):
        select_devices(devices, "pixel9", "devices.yaml")


def test_cli_devices_path_errors_are_one_line(tmp_path, capsys):
    from profiler.run import main

    with pytest.raises(SystemExit) as exit_:
        main(["--devices", str(tmp_path / "none.yaml"), "--device", "local"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'none.yaml'}: no such devices file (use --devices PATH)"]
