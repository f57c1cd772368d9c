"""Custom node packs: a pack that exits, interrupts or hangs at import is skipped, not fatal."""

from __future__ import annotations

import builtins
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from engine import registry as reg_mod
from engine.registry import NodeRegistry

GOOD_PACK = (
    "from engine import Input, Node, NodeResult\n"
    "class {name}(Node):\n"
    "    TYPE = '{name}'\n"
    "    OUTPUT_NODE = True\n"
    "    name: str = Input('world')\n"
    "    def execute(self, ctx):\n"
    "        return NodeResult((), {{'text': ['hello ' + self.name]}})\n"
    "NODE_CLASSES = ({name},)\n"
)


def good(name: str) -> str:
    return GOOD_PACK.format(name=name)


def hang_until(flag: Path) -> str:
    """Pack source that blocks at import until ``flag`` exists (so the test can release it)."""
    return ("import time, pathlib\n"
            f"while not pathlib.Path({str(flag)!r}).exists():\n"
            "    time.sleep(0.02)\n"
            "from engine import Node\n"
            "class Late(Node):\n"
            "    TYPE = 'LateNode'\n"
            "NODE_CLASSES = (Late,)\n")


@pytest.fixture
def packs(tmp_path: Path) -> Path:
    folder = tmp_path / "custom_nodes"
    folder.mkdir()
    (folder / "a_good.py").write_text(good("GoodA"))
    (folder / "z_good").mkdir()
    (folder / "z_good" / "__init__.py").write_text("from .impl import NODE_CLASSES\n")
    (folder / "z_good" / "impl.py").write_text(good("GoodZ"))
    return folder


@pytest.fixture(autouse=True)
def forget_custom_modules():
    yield
    for name in [n for n in sys.modules if n.startswith(("steerflow_custom_nodes.", "regpack_"))]:
        sys.modules.pop(name, None)


def loaded(registry: NodeRegistry) -> set[str]:
    return set(registry.classes)


@pytest.mark.parametrize("body, expected", [
    ("import sys\nsys.exit(3)\n", "SystemExit: the pack called sys.exit(3) at import"),
    ("import sys\nsys.exit()\n", "SystemExit: the pack called sys.exit(None) at import"),
    ("raise KeyboardInterrupt\n", "KeyboardInterrupt: the pack raised KeyboardInterrupt"),
    ("raise RuntimeError('broken')\n", "RuntimeError: broken"),
])
def test_failing_pack_in_folder_is_skipped(packs: Path, body: str, expected: str):
    (packs / "m_bad.py").write_text(body)
    registry = NodeRegistry()
    registry.load_directory(packs)
    assert loaded(registry) == {"GoodA", "GoodZ"}  # packs before and after still load
    [error] = registry.errors
    assert error.pack == str(packs / "m_bad.py")
    assert error.message.startswith(expected)
    assert "steerflow_custom_nodes.m_bad" not in sys.modules


def test_a_node_whose_type_is_taken_is_skipped_and_the_rest_of_the_pack_loads(packs: Path):
    """A native pack with one clashing TYPE (another pack's, or not a node at all) kept
    the nodes before it and lost those after it; now only that one is skipped."""
    (packs / "m_clash.py").write_text(
        good("ClashA").replace("NODE_CLASSES = (ClashA,)\n", "")
        + good("GoodA").replace("class GoodA", "class Taken").replace(
            "NODE_CLASSES = (GoodA,)\n", "")
        + good("ClashB").replace("NODE_CLASSES = (ClashB,)\n", "")
        + "NODE_CLASSES = (ClashA, Taken, int, ClashB)\ndef setup(env):\n    pass\n")
    registry = NodeRegistry()
    registry.load_directory(packs)
    assert loaded(registry) == {"GoodA", "GoodZ", "ClashA", "ClashB"}
    assert registry.get("GoodA").__module__.endswith("a_good")  # the first one is kept
    messages = [e.describe() for e in registry.errors]
    assert len(messages) == 2 and all(" loaded, but: node " in m for m in messages)
    assert "'GoodA' skipped" in messages[0] and "first is kept" in messages[0]
    assert "'int' skipped" in messages[1]
    assert len(registry.setups) == 1


def test_exit_in_a_package_submodule_is_skipped(packs: Path):
    (packs / "m_bad").mkdir()
    (packs / "m_bad" / "__init__.py").write_text("from . import sub\n")
    (packs / "m_bad" / "sub.py").write_text("raise SystemExit('bye')\n")
    registry = NodeRegistry()
    registry.load_directory(packs)
    assert loaded(registry) == {"GoodA", "GoodZ"}
    assert [e.message for e in registry.errors] == [
        "SystemExit: the pack called sys.exit('bye') at import"]
    # nothing of the failed package is left behind for a later import to pick up
    assert not [n for n in sys.modules if n.startswith("steerflow_custom_nodes.m_bad")]


def test_hanging_pack_times_out_and_loading_continues(packs: Path, tmp_path: Path):
    flag = tmp_path / "release"
    (packs / "m_hang.py").write_text(hang_until(flag))
    registry = NodeRegistry()
    start = time.monotonic()
    try:
        registry.load_directory(packs, timeout=0.5)
        elapsed = time.monotonic() - start
        assert elapsed < 10
        assert loaded(registry) == {"GoodA", "GoodZ"}
        [error] = registry.errors
        assert error.pack == str(packs / "m_hang.py")
        assert "did not finish within 0.5s" in error.message
        assert "m_hang.py:" in error.message  # where it hangs
        # the abandoned import is stopped (it looped in Python: it burnt a core for good),
        # without the flag, and nothing of it is registered or left in sys.modules
        deadline = time.monotonic() + 10
        while "steerflow_custom_nodes.m_hang" in reg_mod._stuck \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "steerflow_custom_nodes.m_hang" not in reg_mod._stuck
        assert not [t for t in threading.enumerate() if t.name.endswith(".m_hang")]
        assert "LateNode" not in registry
        assert "steerflow_custom_nodes.m_hang" not in sys.modules
    finally:
        flag.touch()


def test_a_retry_while_an_abandoned_import_still_runs_fails_at_once(packs: Path,
                                                                    monkeypatch):
    """An import blocked in C cannot be stopped at once: a retry meanwhile is refused at
    once rather than after another wait."""
    monkeypatch.setattr(reg_mod, "_stop_thread", lambda thread: None)  # as if blocked
    release = threading.Event()
    (packs / "m_block.py").write_text("import builtins\nbuiltins._steerflow_block.wait()\n"
                                      "NODE_CLASSES = ()\n")
    builtins._steerflow_block = release
    try:
        NodeRegistry().load_directory(packs, timeout=0.5)
        again = NodeRegistry()
        start = time.monotonic()
        again.load_directory(packs, timeout=5)
        assert time.monotonic() - start < 4
        assert "still running" in next(e for e in again.errors if "m_block" in e.pack).message
    finally:
        release.set()
        del builtins._steerflow_block


def test_module_constant_is_the_default_limit(packs: Path, tmp_path: Path, monkeypatch):
    flag = tmp_path / "release"
    (packs / "m_hang2.py").write_text(hang_until(flag))
    monkeypatch.setattr(reg_mod, "PACK_IMPORT_TIMEOUT", 0.3)
    registry = NodeRegistry()
    try:
        registry.load_directory(packs)
    finally:
        flag.touch()
    assert "did not finish within 0.3s" in registry.errors[0].message
    assert loaded(registry) == {"GoodA", "GoodZ"}


@pytest.mark.parametrize("body, expected", [
    ("import sys\nsys.exit(1)\n", "SystemExit"),
    ("raise KeyboardInterrupt\n", "KeyboardInterrupt"),
])
def test_load_pack_by_name_survives(tmp_path: Path, monkeypatch, body: str, expected: str):
    (tmp_path / "regpack_bad.py").write_text(body)
    (tmp_path / "regpack_good.py").write_text(good("GoodByName"))
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = NodeRegistry()
    registry.load_pack("regpack_bad")
    registry.load_pack("regpack_good")
    assert loaded(registry) == {"GoodByName"}
    assert [e.pack for e in registry.errors] == ["regpack_bad"]
    assert registry.errors[0].message.startswith(expected)
    assert "regpack_bad" not in sys.modules


def test_load_pack_by_name_times_out(tmp_path: Path, monkeypatch):
    flag = tmp_path / "release"
    (tmp_path / "regpack_hang.py").write_text(hang_until(flag))
    (tmp_path / "regpack_fine.py").write_text(good("GoodAfterHang"))
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = NodeRegistry()
    try:
        registry.load_pack("regpack_hang", timeout=0.3)
        registry.load_pack("regpack_fine", timeout=5)
    finally:
        flag.touch()
    assert loaded(registry) == {"GoodAfterHang"}
    assert registry.errors[0].pack == "regpack_hang"
    assert "did not finish within 0.3s" in registry.errors[0].message


def test_entry_point_packs_survive_exit_and_hang(tmp_path: Path, monkeypatch):
    flag = tmp_path / "release"
    (tmp_path / "regpack_ep_exit.py").write_text("import sys\nsys.exit(2)\n")
    (tmp_path / "regpack_ep_hang.py").write_text(hang_until(flag))
    (tmp_path / "regpack_ep_good.py").write_text(good("GoodEntryPoint"))
    dist = tmp_path / "regpack_eps-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: regpack-eps\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[steerflow.nodes]\n"
        "exit = regpack_ep_exit\n"
        "hang = regpack_ep_hang\n"
        "good = regpack_ep_good\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = NodeRegistry()
    try:
        registry.load_entry_points(timeout=0.3)
    finally:
        flag.touch()
    assert "GoodEntryPoint" in registry
    errors = {e.pack: e.message for e in registry.errors}
    assert errors["regpack_ep_exit"].startswith("SystemExit")
    assert "did not finish within 0.3s" in errors["regpack_ep_hang"]


def test_broken_node_classes_are_recorded(packs: Path):
    (packs / "m_bad.py").write_text("NODE_CLASSES = (int,)\n")
    registry = NodeRegistry()
    registry.load_directory(packs)
    assert loaded(registry) == {"GoodA", "GoodZ"}
    assert "'int' skipped: " in registry.errors[0].message
    assert "is not a Node subclass" in registry.errors[0].message


def test_a_pack_may_use_asyncio_and_signal_at_import(packs: Path):
    """ComfyUI imports packs in its main thread; ours import in a guarded thread, where
    Python refuses ``signal.signal`` and ``asyncio.get_event_loop``. Both work, and the
    handler is installed once the import is done (loading from the main thread)."""
    import signal

    (packs / "m_main.py").write_text(
        "import asyncio, signal\n"
        "LOOP = asyncio.get_event_loop()\n"
        "LOOP.run_until_complete(asyncio.sleep(0))\n"
        "def on_usr1(signum, frame):\n"
        "    pass\n"
        "PREVIOUS = signal.signal(signal.SIGUSR1, on_usr1)\n"
        + good("GoodMain"))
    before = signal.getsignal(signal.SIGUSR1)
    try:
        registry = NodeRegistry()
        registry.load_directory(packs, timeout=10)
        assert registry.errors == []
        assert "GoodMain" in loaded(registry)
        module = sys.modules["steerflow_custom_nodes.m_main"]
        assert before == module.PREVIOUS
        assert signal.getsignal(signal.SIGUSR1) is module.on_usr1
        assert signal.signal is reg_mod._real_signal  # only while packs import
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_pack_imports_share_one_event_loop(packs: Path):
    """ComfyUI's packs import under one loop; a loop per pack would keep a descriptor
    per pack open for the life of the process."""
    for name in ("loop_a", "loop_b", "loop_c"):
        (packs / f"{name}.py").write_text(
            "import asyncio\n"
            "LOOP = asyncio.get_event_loop()\n"
            "LOOP.run_until_complete(asyncio.sleep(0))\n"
            + good(name.title().replace("_", "")))
    registry = NodeRegistry()
    registry.load_directory(packs, timeout=10)
    assert registry.errors == []
    loops = {id(sys.modules[f"steerflow_custom_nodes.{name}"].LOOP)
             for name in ("loop_a", "loop_b", "loop_c")}
    assert len(loops) == 1
    assert not sys.modules["steerflow_custom_nodes.loop_a"].LOOP.is_closed()


def test_signal_handlers_of_packs_loaded_off_the_main_thread_are_left_out(packs: Path):
    import signal

    (packs / "m_off.py").write_text(
        "import signal\n"
        "signal.signal(signal.SIGUSR2, lambda *a: None)\n" + good("GoodOff"))
    before = signal.getsignal(signal.SIGUSR2)
    registry = NodeRegistry()
    loader = threading.Thread(target=registry.load_directory, args=(packs,),
                              kwargs={"timeout": 10})
    loader.start()
    loader.join()
    assert "GoodOff" in loaded(registry) and registry.errors == []
    assert signal.getsignal(signal.SIGUSR2) == before


def test_processes_import_a_folder_one_at_a_time(tmp_path: Path):
    """The server and its workers import the same packs; a pack that pip-installs at
    import ran pip in all of them at once. A lock in the folder takes them in turn."""
    import os
    import subprocess

    folder = tmp_path / "custom_nodes"
    folder.mkdir()
    log = tmp_path / "imports.log"
    (folder / "slow_pack.py").write_text(
        "import os, time\n"
        f"log = open({str(log)!r}, 'a')\n"
        "log.write(f'start {os.getpid()}\\n'); log.flush()\n"
        "time.sleep(0.6)\n"
        "log.write(f'end {os.getpid()}\\n'); log.flush()\n"
        "NODE_CLASSES = ()\n")
    code = ("import sys; from pathlib import Path; from engine.registry import NodeRegistry; "
            "NodeRegistry().load_directory(Path(sys.argv[1]), timeout=20)")
    repo = Path(__file__).resolve().parents[1]
    procs = [subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=repo,
                              env={**os.environ, "PYTHONPATH": str(repo)}) for _ in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    lines = log.read_text().split()
    events = list(zip(lines[::2], lines[1::2], strict=True))
    assert len(events) == 6
    for first, second in zip(events[::2], events[1::2], strict=True):  # never interleaved
        assert first[0] == "start" and second == ("end", first[1])


def test_descriptions_and_tooltips_write_code_as_markdown(tmp_path: Path):
    """ComfyUI's front end showed a docstring's ``denoise`` with its double backticks (the
    ComfyUI drill): /object_info writes reST's inline literals as Markdown's."""
    from engine import Environment, Input, Node, NodeResult

    class Documented(Node):
        """Weights like ``(word:1.3)``; `already` Markdown."""

        TYPE = "Documented"
        amount: float = Input(1.0, description="the ``denoise`` of the run")

        def execute(self, ctx):
            return NodeResult()

    schema = Documented.schema(Environment.create(tmp_path, device="cpu"))
    assert schema["description"] == "Weights like `(word:1.3)`; `already` Markdown."
    assert schema["input"]["required"]["amount"][1]["tooltip"] == "the `denoise` of the run"


def test_a_pack_writing_its_settings_at_import_is_no_edit(packs: Path):
    """ComfyUI-Custom-Scripts writes pysssss.json on its first import: the fingerprint
    taken before the imports differed from every worker's, so the server loaded every
    pack twice and warned of an edit nobody made. Settings rewritten as they were (a new
    mtime) change nothing either; an edit of the code does."""
    from engine.pack_sources import sources_fingerprint

    pack = packs / "writes_settings"
    pack.mkdir()
    (pack / "__init__.py").write_text(
        "import pathlib\n"
        "path = pathlib.Path(__file__).with_name('settings.json')\n"
        "path.write_text('{\"theme\": \"dark\"}')\n"
        "NODE_CLASSES = ()\n")
    registry = NodeRegistry()
    registry.load_directory(packs)
    assert (pack / "settings.json").is_file()
    assert registry.sources == sources_fingerprint(packs)  # what a worker's start finds
    (pack / "settings.json").write_text('{"theme": "dark"}')
    os.utime(pack / "settings.json", (1, 1))
    assert registry.sources == sources_fingerprint(packs)
    (pack / "__init__.py").write_text("NODE_CLASSES = ()\n")
    assert registry.sources != sources_fingerprint(packs)
