"""Command-line options refused up front with one line and exit 2, and what a first run
says: a base folder it cannot write, a missing custom-nodes folder, serve's upload limit
and host, ``--verbose`` after the sub-command, the built-in models' install notice."""

from __future__ import annotations

from pathlib import Path

import pytest

from steerflow.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "workflows" / "txt2img.json"


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def no_server(monkeypatch):
    """``serve`` must stop at the check: a server that starts fails the test at once."""
    import server.app

    started: list[object] = []

    def serve(args):
        started.append(args)
        return 0

    monkeypatch.setattr(server.app, "serve", serve)
    return started


@pytest.mark.parametrize("command", ["run", "validate"])
def test_a_models_folder_that_cannot_be_made_is_one_line_not_a_traceback(
        tmp_path, capsys, command):
    """The folder is made by the packs' set-up, which used to run outside the CLI's
    OSError handling (a read-only --base-dir gave a traceback and exit 1)."""
    (tmp_path / "afile").write_text("")
    base = tmp_path / "afile" / "base"  # under a file: nothing can be made there
    capsys.readouterr()
    code = main([command, str(WORKFLOW), "--base-dir", str(base), "--device", "cpu",
                 *(["--no-progress"] if command == "run" else [])])
    line = one_error_line(capsys)
    assert code == 2
    assert str(base / "models") in line


def test_a_first_run_says_where_it_installs_the_built_in_models(tmp_path, models_dir,
                                                                 capsys, monkeypatch):
    """A mistyped --models-dir (or --base-dir) shows before a 140 MB install, not after."""
    from engine.executor import Executor

    monkeypatch.setattr(Executor, "ensure_setup", lambda self: None)  # no install here
    fresh = tmp_path / "typo" / "models"
    capsys.readouterr()
    main(["validate", str(WORKFLOW), "--json", "--base-dir", str(tmp_path),
          "--models-dir", str(fresh), "--device", "cpu"])
    out = capsys.readouterr()
    assert out.err.splitlines()[0] == (f"installing the built-in models into {fresh} "
                                       "(a new folder)")
    assert "installing" not in out.out  # --json's stdout stays JSON
    assert fresh.is_dir()

    monkeypatch.undo()
    main(["validate", str(WORKFLOW), "--base-dir", str(tmp_path),
          "--models-dir", str(models_dir), "--device", "cpu"])  # installs if not yet
    capsys.readouterr()
    assert main(["validate", str(WORKFLOW), "--base-dir", str(tmp_path),
                 "--models-dir", str(models_dir), "--device", "cpu"]) == 0
    assert "installing" not in capsys.readouterr().err  # installed: nothing to say


@pytest.mark.parametrize("command", ["run", "validate", "nodes", "serve"])
@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_custom_nodes_path_that_is_no_folder_is_refused(tmp_path, capsys, no_server,
                                                          command, kind):
    path = tmp_path / "custom_nodes"
    if kind == "file":  # a single-file pack: it goes inside the folder
        path = tmp_path / "single.py"
        path.write_text("NODE_CLASSES = ()\n")
    workflow = [str(WORKFLOW)] if command in ("run", "validate") else []
    capsys.readouterr()
    code = main([command, *workflow, "--custom-nodes", str(path), "--base-dir", str(tmp_path)])
    line = one_error_line(capsys)
    assert code == 2 and not no_server
    assert line.startswith(f"error: --custom-nodes {path}: ")
    assert ("no such folder" if kind == "missing" else "not a folder") in line
    assert not (tmp_path / "models").exists()  # refused before anything was set up


@pytest.mark.parametrize("command", ["run", "validate", "serve"])
@pytest.mark.parametrize("option", ["--models-dir", "--output-dir", "--base-dir"])
def test_a_folder_option_naming_a_file_is_refused_in_one_line(tmp_path, capsys, no_server,
                                                               command, option):
    """The docs drill: serve --models-dir <a file> started, and its worker restarted for
    ever on "File exists"; run and validate said only that."""
    file = tmp_path / "a-file"
    file.write_text("x")
    base = [] if option == "--base-dir" else ["--base-dir", str(tmp_path / "base")]
    workflow = [str(WORKFLOW)] if command in ("run", "validate") else []
    if option == "--output-dir" and command != "run":
        return  # only run takes it
    capsys.readouterr()
    code = main([command, *workflow, option, str(file), *base])
    assert code == 2 and not no_server
    assert one_error_line(capsys) == f"error: {option} {file}: a file is there, not a folder"


def test_validate_names_a_pack_node_skipped_for_a_taken_type_id(tmp_path, models_dir, capsys):
    """A pack's KSampler clashes with the built-in one: the workflow would silently get the
    built-in, so run and validate say so (as serve and nodes do), without -v."""
    pack = tmp_path / "custom_nodes" / "dup_pack"
    pack.mkdir(parents=True)
    (pack / "__init__.py").write_text(
        "class KSampler:\n"
        "    @classmethod\n"
        "    def INPUT_TYPES(cls):\n"
        "        return {'required': {}}\n"
        "    RETURN_TYPES = ()\n"
        "    FUNCTION = 'run'\n"
        "    CATEGORY = 'test'\n"
        "    def run(self):\n"
        "        return ()\n"
        "NODE_CLASS_MAPPINGS = {'KSampler': KSampler}\n")
    capsys.readouterr()
    code = main(["validate", str(WORKFLOW), "--base-dir", str(tmp_path), "--models-dir",
                 str(models_dir), "--device", "cpu", "--custom-nodes", str(pack.parent)])
    err = capsys.readouterr().err
    assert code == 0
    assert "warning: node pack" in err and "'KSampler' skipped" in err


def test_the_registry_refuses_a_custom_nodes_path_that_is_no_folder(tmp_path):
    from engine.registry import NodeRegistry

    with pytest.raises(FileNotFoundError, match="does not exist"):
        NodeRegistry().load_directory(tmp_path / "nope")
    (tmp_path / "single.py").write_text("NODE_CLASSES = ()\n")
    with pytest.raises(NotADirectoryError, match="single-file pack goes inside"):
        NodeRegistry().load_directory(tmp_path / "single.py")


@pytest.mark.parametrize("value", ["-5", "0", "0.0000001", "nan", "inf", "1e9"])
def test_serve_refuses_an_upload_limit_out_of_range(tmp_path, capsys, no_server, value):
    capsys.readouterr()
    code = main(["serve", "--max-upload-mb", value, "--base-dir", str(tmp_path)])
    line = one_error_line(capsys)
    assert code == 2 and not no_server
    assert line.startswith("error: --max-upload-mb must be more than 0 and at most ")


@pytest.mark.parametrize("host", ["not_a_host", "999.1.1.1"])
def test_serve_refuses_a_host_that_resolves_to_nothing(tmp_path, capsys, no_server, host):
    capsys.readouterr()
    code = main(["serve", "--host", host, "--token", "abcdefghijklmnop",
                 "--base-dir", str(tmp_path)])
    line = one_error_line(capsys)
    assert code == 2 and not no_server
    assert line.startswith(f"error: --host {host}: ")


def test_serve_takes_sane_options(tmp_path, capsys, no_server):
    assert main(["serve", "--max-upload-mb", "0.5", "--host", "localhost",
                 "--base-dir", str(tmp_path)]) == 0
    assert len(no_server) == 1


@pytest.mark.parametrize("argv", [
    ["-v", "serve"], ["serve", "-v"], ["serve", "--verbose"], ["run", "wf.json", "-v"],
    ["validate", "wf.json", "--verbose"], ["nodes", "-v"], ["submit", "wf.json", "-v"],
])
def test_verbose_goes_before_or_after_the_sub_command(argv):
    assert build_parser().parse_args(argv).verbose is True


def test_verbose_is_off_unless_given_and_listed_in_each_help(capsys):
    parser = build_parser()
    assert parser.parse_args(["serve"]).verbose is False
    for command in ("run", "validate", "nodes", "serve", "submit"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        assert "--verbose" in capsys.readouterr().out, command


def test_serve_verbose_reaches_the_server(tmp_path, no_server):
    assert main(["serve", "--verbose", "--base-dir", str(tmp_path)]) == 0
    assert no_server[0].verbose is True
