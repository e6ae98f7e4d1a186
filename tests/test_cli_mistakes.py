"""The command line answers a newcomer's mistakes with what to do, in one message and never a traceback: a spec file
with a syntax error, YAML in a file named .json, a file that is not a spec, a service that is not running."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from tests.integration.stack import free_port
from trainq.cli import load_spec_file, main

DIGITS_YAML = """name: yaml-in-a-json-file
dataset: {name: xor}
model:
  layers:
    - {type: dense, units: 4}
    - {type: activation, fn: tanh}
    - {type: dense, units: 2}
loss: {type: cross_entropy}
"""


def run(*args: str):
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


def test_yaml_in_a_file_named_json_is_read_as_yaml(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(DIGITS_YAML)
    assert load_spec_file(str(path))["model"]["layers"][2] == {"type": "dense", "units": 2}


@pytest.mark.parametrize("name, text, says", [
    ("spec.json", '{"name": "x",\n "dataset": {"name": "xor"}\n "model": {}}', "spec.json: not valid JSON at line 3, "
                                                                             "column 2: Expecting ',' delimiter"),
    ("spec.yaml", "name: x\ndataset: {name: xor\nmodel: {}\n", "spec.yaml: not valid YAML at line 3, column 6"),
    ("spec.yaml", "- a list\n- not a spec\n", "a spec is a mapping of fields (name:, dataset:, model:, ...), not list"),
    ("spec.yaml", "", "not an empty file"),
])
def test_a_spec_file_that_is_not_a_spec_is_one_clear_message(tmp_path, name, text, says):
    path = tmp_path / name
    path.write_text(text)
    for command in (["submit", str(path), "--url", "http://127.0.0.1:9"], ["train", str(path)]):
        result = run(*command)
        assert result.exit_code == 1 and says in result.output, result.output
        assert "Traceback" not in result.output


def test_an_unreachable_service_says_how_to_start_one(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(DIGITS_YAML)  # read as YAML: the next mistake is the service's absence
    url = f"http://127.0.0.1:{free_port()}"
    for command in (["submit", str(path)], ["jobs"], ["status", "0" * 32], ["logs", "0" * 32], ["cancel", "0" * 32],
                    ["worker", "list"]):
        result = run(*command, "--url", url)
        assert result.exit_code == 1, (command, result.output)
        assert f"cannot reach the trainq service at {url}" in result.output and "trainq up" in result.output


def test_a_real_process_prints_no_traceback_for_a_users_mistake(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text("{oops")
    answer = subprocess.run([sys.executable, "-m", "trainq.cli", "submit", str(path)], capture_output=True, text=True,
                            cwd=tmp_path)
    assert answer.returncode == 1 and "Traceback" not in answer.stderr
    assert answer.stderr.strip().startswith("Error: ") and "not valid JSON at line 1, column 2" in answer.stderr


def test_a_job_id_that_is_not_one_is_a_usage_error_saying_what_one_is():
    for command in ("status", "logs", "cancel"):
        result = run(command, "0123", "--url", "http://127.0.0.1:9")  # checked before any request is sent
        assert result.exit_code == 2 and "'0123' is not a job id: one is 32 hex digits" in result.output
