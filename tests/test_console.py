"""A quiet console by default: no TensorFlow start-up lines; ``--verbose`` brings them back."""

import os
import platform
import re
import subprocess
import sys

import pytest

from ensemble.core.console import quiet_console, silenced_stderr

#: Lines TensorFlow writes while it starts: absl's notice, glog-style C++ lines
#: (``I0000 00:00:1795867508.448990    6457 port.cc:153] oneDNN …``), the instruction-set
#: sentence of cpu_feature_guard, and Python-side ``WARNING:tensorflow:`` lines (retracing).
TENSORFLOW_LINE = re.compile(
    r"^(WARNING: All log messages before absl"
    r"|[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\]"
    r"|To enable the following instructions"
    r"|WARNING:tensorflow:)"
)


def user_environment() -> dict[str, str]:
    """The environment of a user who set nothing (the test session sets TF_CPP_MIN_LOG_LEVEL)."""
    return {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}


def tensorflow_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if TENSORFLOW_LINE.match(line)]


def run_python(code: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code]
    return subprocess.run(
        command, capture_output=True, text=True, env=user_environment(), timeout=300
    )


def test_silenced_stderr_hides_writes_to_the_file_descriptor(capfd):
    with silenced_stderr():
        os.write(2, b"as TensorFlow's C++ code writes\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_quiet_console_keeps_what_the_user_set(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    quiet_console()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"


@pytest.mark.skipif(platform.machine() != "x86_64", reason="oneDNN start-up line on x86-64")
def test_importing_tensorflow_after_quiet_console_prints_nothing():
    loud = run_python("import tensorflow")
    assert loud.returncode == 0 and tensorflow_lines(loud.stderr)  # what a user sees otherwise
    quiet = run_python(
        "from ensemble.core.console import quiet_console\n"
        "quiet_console()\n"
        "import tensorflow as tf\n"
        "print(tf.constant(2).numpy())"
    )
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == "2\n" and quiet.stderr == ""


def predict_command(run, folder, out, *options):
    return [
        sys.executable,
        "-m",
        "ensemble",
        *options,
        "predict",
        folder,
        "--run",
        run,
        "--out",
        out,
    ]


def test_predict_stderr_holds_only_its_own_line(fitted_ci_run, synthetic_folder, tmp_path):
    command = predict_command(fitted_ci_run, synthetic_folder / "platelet", tmp_path / "p.csv")
    result = subprocess.run(
        command, capture_output=True, text=True, env=user_environment(), timeout=600
    )
    assert result.returncode == 0, result.stderr
    # The tiny run is too small for alpha = 0.01, which predict says in its own warning lines.
    lines = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]
    assert tensorflow_lines(result.stderr) == []
    assert len(lines) == 1 and lines[0].startswith("12 predicted, 0 skipped"), lines


@pytest.mark.skipif(platform.machine() != "x86_64", reason="oneDNN start-up line on x86-64")
def test_verbose_brings_tensorflow_lines_back(fitted_ci_run, synthetic_folder, tmp_path):
    command = predict_command(
        fitted_ci_run, synthetic_folder / "platelet", tmp_path / "p.csv", "--verbose"
    )
    result = subprocess.run(
        command, capture_output=True, text=True, env=user_environment(), timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert any("oneDNN" in line for line in tensorflow_lines(result.stderr)), result.stderr
