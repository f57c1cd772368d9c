"""Train an IP-Adapter for steerflow-shapes on the shapes-world CLIP's image embeddings.

    python -m training.train_ip_adapter --base <steerflow-shapes folder> \\
        --clip <steerflow-shapes-clip.safetensors> --out output/training --threads 1

The recipe is the paper's (Ye et al. 2023) at the shapes world's size: the UNet, VAE and
text encoder stay frozen; trained are the image projection (the projected CLIP image
embedding → 4 tokens, a Linear and a LayerNorm: diffusers' ``ImageProjection``) and, in
every cross-attention layer, the key and value projections of the image tokens,
initialised from the layer's own ``to_k`` / ``to_v``. Each sample's caption is dropped
half the time (so the image alone must carry the picture, as an image prompt with an
empty text is used) and its image embedding 5% of the time (zeros, the unconditional
image of the pipelines). The UNet runs with diffusers' IP-Adapter attention processors
(training only; sampling uses the engine's attention hook), and the result is written
in the original file layout that Load IP-Adapter and diffusers' ``load_ip_adapter``
read. The training images are rendered once (``--pool`` samples, VAE latents and CLIP
embeddings computed up front).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from nodes.diffusion.clip_vision import load_clip_vision
from nodes.diffusion.ip_adapter import cross_attention_layers
from nodes.diffusion.tokenizer import load_clip_tokenizer
from training.loop import LoopConfig, seed_everything, train_loop
from training.models import build_noise_scheduler
from training.shapes import ShapesDataset, image_to_tensor
from training.train import (
    CaptionEncoder,
    StageOptions,
    add_common_args,
    add_training_noise,
    diffusion_loss,
    load_text_encoder,
    load_unet,
    load_vae,
    loop_config,
)

IP_ADAPTER_NAME = "steerflow-shapes-ip-adapter"
STAGE = "ip_adapter"
TOKENS = 4
DEFAULTS: dict[str, float | int] = {"steps": 3000, "batch_size": 16, "lr": 1e-3, "warmup": 100}


def initial_state(unet: torch.nn.Module, embed_dim: int, seed: int = 0
                  ) -> dict[str, dict[str, torch.Tensor]]:
    """An untrained IP-Adapter in the original layout: a small random projection and
    ``to_k_ip`` / ``to_v_ip`` copied from each cross-attention layer's ``to_k`` / ``to_v``."""
    g = torch.Generator().manual_seed(seed)
    cross = int(unet.config.cross_attention_dim)
    image_proj = {"proj.weight": torch.randn(cross * TOKENS, embed_dim, generator=g) * 0.02,
                  "proj.bias": torch.zeros(cross * TOKENS),
                  "norm.weight": torch.ones(cross), "norm.bias": torch.zeros(cross)}
    modules = dict(unet.named_modules())
    layers = {}
    for k, (name, _) in enumerate(cross_attention_layers(unet)):
        attn = modules[name[:-len(".processor")]]
        layers[f"{2 * k + 1}.to_k_ip.weight"] = attn.to_k.weight.detach().clone()
        layers[f"{2 * k + 1}.to_v_ip.weight"] = attn.to_v.weight.detach().clone()
    return {"image_proj": image_proj, "ip_adapter": layers}


def trained_state(unet: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """The UNet's loaded IP-Adapter back in the original layout."""
    proj = unet.encoder_hid_proj.image_projection_layers[0]
    image_proj = {"proj.weight": proj.image_embeds.weight, "proj.bias": proj.image_embeds.bias,
                  "norm.weight": proj.norm.weight, "norm.bias": proj.norm.bias}
    processors = unet.attn_processors
    layers = {}
    for k, (name, _) in enumerate(cross_attention_layers(unet)):
        proc = processors[name]
        layers[f"{2 * k + 1}.to_k_ip.weight"] = proc.to_k_ip[0].weight
        layers[f"{2 * k + 1}.to_v_ip.weight"] = proc.to_v_ip[0].weight
    return {"image_proj": {k: v.detach().float().cpu().contiguous() for k, v in image_proj.items()},
            "ip_adapter": {k: v.detach().float().cpu().contiguous() for k, v in layers.items()}}


def save_ip_adapter(state: dict[str, dict[str, torch.Tensor]], path: Path,
                    metadata: dict[str, str] | None = None) -> None:
    flat = {f"{part}.{k}": v.half() for part, d in state.items() for k, v in d.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(flat, str(tmp), metadata=metadata or {})
    tmp.replace(path)


@torch.no_grad()
def render_pool(dataset: ShapesDataset, pool: int, vae: torch.nn.Module, clip, batch: int = 256
                ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Latents (scaled), projected CLIP image embeddings and captions of samples
    ``0 .. pool-1``."""
    latents, embeds, captions = [], [], []
    scale = float(vae.config.scaling_factor)
    for start in range(0, pool, batch):
        idx = range(start, min(start + batch, pool))
        images = [dataset.sample(i).image for i in idx]
        pixels = torch.stack([image_to_tensor(im) for im in images])  # -1..1, [B, 3, H, W]
        latents.append(vae.encode(pixels.to(vae.device)).latent_dist.mean * scale)
        as_image = ((pixels + 1) / 2).permute(0, 2, 3, 1)  # IMAGE layout, 0..1
        embeds.append(clip.image_embeds(as_image).float())
        captions.extend(dataset.caption(i) for i in idx)
    return torch.cat(latents), torch.cat(embeds), captions


def train_ip_adapter(opts: StageOptions, loop: LoopConfig, clip_path: Path, out: Path, *,
                     batch_size: int = 16, pool: int = 8192, text_dropout: float = 0.5,
                     image_dropout: float = 0.05, snr_gamma: float | None = 5.0,
                     timesteps: str = "uniform") -> Path:
    seed_everything(opts.seed)
    vae, text_encoder, unet = load_vae(opts), load_text_encoder(opts), load_unet(opts)
    clip = load_clip_vision(clip_path)
    encoder = CaptionEncoder(load_clip_tokenizer(), text_encoder)
    dataset = ShapesDataset(seed=opts.seed, size=opts.configs.image_size)
    latents, embeds, captions = render_pool(dataset, pool, vae, clip)
    unet._load_ip_adapter_weights([initial_state(unet, embeds.shape[-1], opts.seed)],
                                  low_cpu_mem_usage=False)
    trainable = [*unet.encoder_hid_proj.parameters()]
    for name, _ in cross_attention_layers(unet):
        trainable += list(unet.attn_processors[name].parameters())
    for p in trainable:
        p.requires_grad_(True)
    scheduler = build_noise_scheduler()
    rng = np.random.default_rng(opts.seed)

    def loss_fn(step: int) -> torch.Tensor:
        idx = rng.integers(0, pool, batch_size)
        drop_text = rng.random(batch_size) < text_dropout
        texts = ["" if d else captions[i] for i, d in zip(idx, drop_text, strict=True)]
        with torch.no_grad():
            context = encoder(texts)
        image = embeds[idx].clone()
        image[torch.from_numpy(rng.random(batch_size) < image_dropout)] = 0.0
        noise, t, noisy = add_training_noise(latents[idx], scheduler, timesteps)
        pred = unet(noisy, t, context,
                    added_cond_kwargs={"image_embeds": [image[:, None, :]]}).sample
        return diffusion_loss(pred, noise, t, scheduler, snr_gamma)

    modules = {"proj": unet.encoder_hid_proj,
               "layers": torch.nn.ModuleList([unet.attn_processors[n]
                                              for n, _ in cross_attention_layers(unet)])}
    result, ema = train_loop(STAGE, loop, modules, trainable, loss_fn,
                             Path(out) / "checkpoints" / STAGE)
    if ema is not None:
        ema.copy_to(trainable)
    state = trained_state(unet)
    meta = {"steerflow.ip_adapter": json.dumps({
        "base": "steerflow-shapes", "image_encoder": clip_path.name, "steps": len(result.losses)
        + result.start_step, "batch_size": batch_size, "pool": pool,
        "text_dropout": text_dropout, "image_dropout": image_dropout})}
    target = Path(out) / f"{IP_ADAPTER_NAME}.safetensors"
    save_ip_adapter(state, target, meta)
    print(f"ip_adapter: {len(result.losses)} steps in {result.seconds:.0f} s "
          f"({result.seconds_per_step:.3f} s/step), last loss "
          f"{np.mean(result.losses[-50:]):.4f}, to {target}")
    return target


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.train_ip_adapter",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--base", type=Path, required=True,
                        help="steerflow-shapes' diffusers folder (vae/, text_encoder/, unet/)")
    parser.add_argument("--clip", type=Path, required=True, help="steerflow-shapes-clip file")
    parser.add_argument("--pool", type=int, default=8192, help="training samples rendered")
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay (0: none)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    opts = StageOptions(out_dir=args.base, seed=args.seed, device=args.device)
    loop = loop_config(args, DEFAULTS, ema_decay=args.ema or None)
    train_ip_adapter(opts, loop, args.clip, args.out,
                     batch_size=int(args.batch_size or DEFAULTS["batch_size"]), pool=args.pool)


if __name__ == "__main__":
    main()
