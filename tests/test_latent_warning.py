"""Empty Latent Image without its ``vae`` assumes SD's 8x VAE; decoding with another VAE
warns (a ``node_warning`` event, printed by the CLI) and names the fix."""

from __future__ import annotations

import json

from engine.session import Session
from steerflow.cli import main


def graph(link_vae: bool) -> dict:
    latent = {"width": 64, "height": 64, "batch_size": 1}
    if link_vae:
        latent["vae"] = ["ckpt", 2]
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple",
                 "inputs": {"ckpt_name": "steerflow-shapes"}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": latent},
        "decode": {"class_type": "VAEDecode",
                   "inputs": {"samples": ["latent", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}},
    }


def test_decoding_an_8x_latent_with_a_4x_vae_warns_and_names_the_fix(tmp_path):
    session = Session(tmp_path, device="cpu")
    result = session.run(graph(link_vae=False), keep_events=True)
    assert result.ok, result.run.error
    warnings = [d for name, d in result.events if name == "node_warning"]
    assert len(warnings) == 1 and warnings[0]["node"] == "decode"
    message = warnings[0]["message"]
    assert "4x" in message and "32x32 instead of 64x64" in message
    assert "vae input" in message
    # linked as the fix says: no warning
    fixed = session.run(graph(link_vae=True), keep_events=True)
    assert fixed.ok and not [d for name, d in fixed.events if name == "node_warning"]


def test_the_cli_prints_run_time_warnings(tmp_path, capsys):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(graph(link_vae=False)))
    assert main(["run", str(path), "--base-dir", str(tmp_path), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning: node decode:" in err and "Empty Latent Image" in err
