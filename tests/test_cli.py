"""The command line and the Python API, as a user calls them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.session import Session, Workflow, WorkflowInputError

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "workflows" / "txt2img.json"


def steerflow(*args: str, home: Path, models: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "steerflow.cli", *args, "--base-dir", str(home),
         "--models-dir", str(models), "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=300, cwd=home)


def cli(*args: str, home: Path, models: Path, capsys: pytest.CaptureFixture[str]
        ) -> subprocess.CompletedProcess[str]:
    """The CLI in-process (the subprocess start-up costs seconds per call)."""
    from steerflow.cli import main

    capsys.readouterr()
    code = main([*args[:2], *args[2:], "--base-dir", str(home), "--models-dir", str(models),
                 "--device", "cpu"])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def fast(*extra: str) -> list[str]:
    return ["--set", "3.steps=3", *extra]


def test_run_validate_and_rerun_png(tmp_path, models_dir, capsys):
    done = steerflow("run", str(WORKFLOW), *fast("--set", "3.seed=5"), "--no-progress",
                     home=tmp_path, models=models_dir)
    assert done.returncode == 0, done.stderr
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("image: ")]
    png = Path(line.removeprefix("image: "))
    assert png.is_file() and png.parent == tmp_path / "output"
    again = cli("run", str(png), "--no-progress", home=tmp_path, models=models_dir,
                capsys=capsys)
    assert again.returncode == 0, again.stderr
    ok = cli("validate", str(WORKFLOW), home=tmp_path, models=models_dir, capsys=capsys)
    assert ok.returncode == 0 and "valid" in ok.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "3.steps=abc"], "invalid_value"),
    (["--set", "3.cfg=1000"], "out_of_range"),
    (["--set", "3.sampler_name=nope"], "not_in_choices"),
    (["--set", "4.ckpt_name=missing.safetensors"], "not_in_choices"),
    (["--set", "9.nope=1"], "has no input 'nope'"),
    (["--set", "99.seed=1"], "no node '99'"),
    (["--set", "garbage"], "NODE_ID.INPUT=VALUE"),
])
def test_bad_input_is_a_clear_error_not_a_traceback(tmp_path, models_dir, capsys, args,
                                                      message):
    done = cli("run", str(WORKFLOW), *args, home=tmp_path, models=models_dir, capsys=capsys)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_model_says_where_on_this_machine_the_file_goes(tmp_path, models_dir, capsys):
    """The wild-workflows drill: "is not one of [] (looked in models/vae/)" named a folder
    relative to a base dir the user may not know."""
    done = cli("validate", str(WORKFLOW), "--set", "4.ckpt_name=missing.safetensors",
               home=tmp_path, models=models_dir, capsys=capsys)
    assert done.returncode == 2
    assert f"(looked in models/checkpoints/); to use it, put the file in " \
           f"{models_dir / 'checkpoints'}" in done.stderr


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"nodes": [], "links": []}',
                                     '{"1":' + "[" * 5000 + "]" * 5000 + "}",
                                     "[" * 100_000 + "]" * 100_000])
def test_unreadable_workflow_files(tmp_path, models_dir, capsys, content):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    done = cli("run", str(bad), home=tmp_path, models=models_dir, capsys=capsys)
    assert done.returncode == 2 and "error:" in done.stderr and "Traceback" not in done.stderr


def test_missing_workflow_file(tmp_path, models_dir, capsys):
    done = cli("run", str(tmp_path / "nope.json"), home=tmp_path, models=models_dir,
               capsys=capsys)
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_validate_json_lists_every_issue(tmp_path, models_dir, capsys):
    done = cli("validate", str(WORKFLOW), "--json", "--set", "3.steps=0",
               "--set", "5.width=7", home=tmp_path, models=models_dir, capsys=capsys)
    assert done.returncode == 2
    issues = json.loads(done.stdout)
    assert {(i["node_id"], i["input_name"], i["kind"]) for i in issues} == {
        ("3", "steps", "out_of_range"), ("5", "width", "out_of_range")}


def test_nodes_json_is_the_full_schema(tmp_path, models_dir, capsys):
    done = cli("nodes", "--json", home=tmp_path, models=models_dir, capsys=capsys)
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    ks = schema["KSampler"]
    assert ks["input"]["required"]["steps"] == ["INT", {"default": 20, "min": 1, "max": 10000}]
    assert "dpmpp_2m" in ks["input"]["required"]["sampler_name"][0]
    assert ks["output"] == ["LATENT"] and ks["category"] == "sampling"
    assert schema["SaveImage"]["output_node"] is True
    assert "steerflow-tiny" in schema["CheckpointLoaderSimple"]["input"]["required"][
        "ckpt_name"][0]


def test_python_api_overrides_and_events(tmp_path, models_dir):
    session = Session(tmp_path, models_dir=models_dir, device="cpu")
    wf = Workflow.load(WORKFLOW).set("3.steps", 3).set("Sample.seed", 123)  # by id or title
    result = session.run(wf, keep_events=True)
    assert result.ok
    (image,) = result.images
    assert image.size == (64, 64)
    names = [name for name, _ in result.events]
    assert names[0] == "execution_start" and "progress" in names and "execution_success" in names
    with pytest.raises(WorkflowInputError):
        wf.set("nope.seed", 1)


def test_an_untitled_node_is_named_by_its_type_or_display_names(tmp_path, models_dir):
    """The ComfyUI drill: ``--set KSampler.steps=4`` on ComfyUI's own default workflow (UI
    format, no titles) said "no node 'KSampler'"; only node ids worked."""
    session = Session(tmp_path, models_dir=models_dir, device="cpu")
    prompt = {nid: {k: v for k, v in node.items() if k != "_meta"}
              for nid, node in Workflow.load(WORKFLOW).prompt.items()}
    wf = Workflow.from_object(prompt)
    for ref in ("KSampler", "Sample"):  # the type (ComfyUI's name for it) and ours
        wf.set(f"{ref}.steps", 4, session.registry)
        assert wf.prompt["3"]["inputs"]["steps"] == 4
        wf.prompt["3"]["inputs"]["steps"] = 2
    wf.set("Load Checkpoint.ckpt_name", "steerflow-tiny", session.registry)
    wf.set("EmptyLatentImage.width", 48, session.registry)
    assert wf.prompt["5"]["inputs"]["width"] == 48
    with pytest.raises(WorkflowInputError, match="names 2 nodes"):  # two prompts
        wf.set("CLIPTextEncode.text", "x", session.registry)
    wf.prompt["11"] = {"class_type": "PrimitiveInt", "inputs": {"value": 1}}
    for ref in ("Primitive", "PrimitiveNode"):  # what ComfyUI shows and calls it
        wf.set(f"{ref}.value", 5, session.registry)
        assert wf.prompt["11"]["inputs"]["value"] == 5
        wf.prompt["11"]["inputs"]["value"] = 1
    wf.prompt["3"]["_meta"] = {"title": "Mine"}  # a title names it; its type still does
    wf.set("Mine.steps", 5, session.registry)
    assert wf.prompt["3"]["inputs"]["steps"] == 5
    wf.set("KSampler.steps", 6, session.registry)  # (the examples title every node)
    assert wf.prompt["3"]["inputs"]["steps"] == 6
    wf.prompt["12"] = {"class_type": "KSampler", "inputs": {}}  # an untitled one comes first
    wf.set("KSampler.steps", 7, session.registry)
    assert wf.prompt["12"]["inputs"]["steps"] == 7 and wf.prompt["3"]["inputs"]["steps"] == 6


def test_custom_node_pack_folder(tmp_path, models_dir):
    packs = tmp_path / "custom_nodes"
    (packs / "greet").mkdir(parents=True)
    (packs / "greet" / "__init__.py").write_text(
        "from engine import Input, Node, NodeResult, Output\n"
        "class Greet(Node):\n"
        "    TYPE = 'Greet'\n"
        "    OUTPUT_NODE = True\n"
        "    name: str = Input('world')\n"
        "    def execute(self, ctx):\n"
        "        return NodeResult((), {'text': ['hello ' + self.name]})\n"
        "NODE_CLASSES = (Greet,)\n")
    (packs / "broken.py").write_text("raise RuntimeError('this pack is broken')\n")
    session = Session(tmp_path, models_dir=models_dir, device="cpu", custom_nodes=packs)
    assert [e.pack for e in session.registry.errors] == [str(packs / "broken.py")]
    result = session.run({"1": {"class_type": "Greet", "inputs": {"name": "pack"}}})
    assert result.run.outputs == {"1": {"text": ["hello pack"]}}


def test_a_workflow_saved_with_a_bom_loads(tmp_path, models_dir, capsys):
    """Windows' Notepad saves UTF-8 with a byte-order mark."""
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + WORKFLOW.read_bytes())
    done = cli("validate", str(bom), home=tmp_path, models=models_dir, capsys=capsys)
    assert done.returncode == 0, done.stderr


def test_an_output_dir_that_cannot_be_made_is_refused_before_running(tmp_path, models_dir,
                                                                      capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    done = cli("run", str(WORKFLOW), "--output-dir", str(blocker / "out"), home=tmp_path,
               models=models_dir, capsys=capsys)
    assert done.returncode == 2 and "cannot create the output folder" in done.stderr
    assert "Traceback" not in done.stderr and "step" not in done.stderr  # nothing ran


def test_an_empty_output_dir_is_the_default_not_the_working_directory(tmp_path, models_dir,
                                                                      capsys, monkeypatch):
    """``--output-dir "$OUT"`` with OUT unset wrote into whatever directory the shell was
    in; as ComfyUI's flags, an empty folder is no folder."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    home = tmp_path / "home"
    done = cli("run", str(WORKFLOW), *fast(), "--output-dir", "", "--no-progress", home=home,
               models=models_dir, capsys=capsys)
    assert done.returncode == 0, done.stderr
    assert list(cwd.iterdir()) == []
    assert list((home / "output").glob("*.png"))


@pytest.mark.parametrize("device", ["nonsense", "cuda:99", "cuda:-1", "CPU", "mps"])
def test_a_bad_device_is_refused_up_front(tmp_path, models_dir, capsys, monkeypatch, device):
    """Bad input exits 2 with one line and no traceback, before any model loads (it used
    to load the checkpoint, then fail in the first node with torch's RuntimeError)."""
    import torch

    import steerflow.cli as cli_module
    from steerflow.cli import main

    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")

    def no_session(*args, **kwargs):
        raise AssertionError("the session (and its models) must not be loaded")

    monkeypatch.setattr(cli_module, "_session", no_session)
    capsys.readouterr()
    code = main(["run", str(WORKFLOW), "--no-progress", "--base-dir", str(tmp_path),
                 "--models-dir", str(models_dir), "--device", device])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith(f"error: --device {device}: ") and err.count("\n") == 1, err
    assert not (tmp_path / "output").exists()


def test_a_device_torch_parses_but_this_machine_cannot_run_is_refused():
    from steerflow.cli import device_problem

    assert device_problem("cpu") is None and device_problem("cpu:0") is None
    assert "no meta device is available" in (device_problem("meta") or "")
    assert "not a torch device" in (device_problem("cuda:x") or "")
    assert device_problem("cuda:3", check_available=False) is None  # Ray: parsed only


# (a device name that is no torch device at all: device_problem's test above)
@pytest.mark.parametrize("option", [["--device", "cuda:99"],
                                    ["--workers", "2", "--worker-devices", "cpu,gpu0"]],
                         ids=["cuda-99", "worker-devices"])
def test_serve_refuses_a_bad_device_before_starting(tmp_path, option):
    """The server process itself never imports torch: the check runs in a child."""
    from tests.server.helpers import free_port

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "steerflow.cli", "serve", "--port", str(free_port()),
         "--base-dir", str(tmp_path), *option],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {option[-2]} "), lines
    assert "Steerflow server on" not in done.stdout
    assert not (tmp_path / "data").exists()  # nothing started


def test_a_closed_stdout_pipe_ends_quietly(tmp_path):
    """``steerflow nodes --json | head -1``: no BrokenPipeError traceback; the exit status a
    Unix tool killed by SIGPIPE gives (128 + 13)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "steerflow", "nodes", "--json",
                             "--base-dir", str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().strip() == b"{"  # ~600 KB follow: more than a pipe holds
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_broken_pipe_elsewhere_is_not_hidden(monkeypatch, capsys):
    """Only stdout's closed reader is quiet: another BrokenPipeError still raises."""
    from steerflow import cli

    def broken(args):
        raise BrokenPipeError("a socket")

    monkeypatch.setitem(cli._COMMANDS, "nodes", broken)
    with pytest.raises(BrokenPipeError, match="a socket"):
        cli.main(["nodes"])
