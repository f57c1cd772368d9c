"""Extract a LoRA from a model difference: ComfyUI's LoraSave (``nodes_lora_extract.py``).

Feed it the difference of a fine-tune and its base (Model Merge Subtract, CLIP Merge
Subtract): every linear and convolution weight's difference becomes a rank-``rank`` LoRA
by SVD (``up = U·S``, ``down = Vh``, both clamped at their 0.99 quantile as ComfyUI does),
or is kept whole (``full_diff``); with ``bias_diff`` the biases' and norms' differences
are kept too. The file goes to models/loras, where Load LoRA lists it at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine import Environment, ExecutionContext, Input, Node, NodeResult
from nodes.comfy_training import save_lora_file, save_prefix_problem
from nodes.diffusion.handles import DiffusionModel, TextEncoder

if TYPE_CHECKING:
    import torch

MAX_RANK = 4096
CLAMP_QUANTILE = 0.99
QUANTILE_LIMIT = 1 << 24  # torch.quantile's input limit; larger ones use kthvalue


def low_rank(diff: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) of the rank-``rank`` SVD approximation of a weight difference (a linear
    ``[out, in]`` or convolution ``[out, in, kh, kw]``), clamped as ComfyUI does."""
    import torch

    matrix = diff.float().flatten(1)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    r = min(rank, s.numel())
    up, down = u[:, :r] * s[:r], vh[:r]
    values = torch.cat([up.flatten(), down.flatten()])
    if values.numel() <= QUANTILE_LIMIT:
        high = torch.quantile(values, CLAMP_QUANTILE)
    else:
        high = values.kthvalue(max(1, int(CLAMP_QUANTILE * values.numel()))).values
    up, down = up.clamp(-high, high), down.clamp(-high, high)
    if diff.dim() == 4:
        return up.reshape(diff.shape[0], r, 1, 1), down.reshape(r, *diff.shape[1:])
    return up, down


def extract(root: torch.nn.Module, patches: tuple[Any, ...], prefix: str, rank: int,
            full_diff: bool, bias_diff: bool, module_name: Any = None) -> dict[str, Any]:
    """The LoRA layers (kohya keys ``prefix + module``) of ``root``'s weights with
    ``patches`` applied (the difference model's own weights)."""
    import torch

    from nodes.diffusion.lora import patched

    out: dict[str, Any] = {}
    name_of = module_name or (lambda n: n)
    with torch.no_grad(), patched(root, patches):
        for name, module in root.named_modules():
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.numel() == 0:
                continue
            key = prefix + name_of(name).replace(".", "_")
            if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
                if full_diff:
                    out[f"{key}.diff"] = weight.detach().float().cpu().clone()
                else:
                    up, down = low_rank(weight.detach(), rank)
                    out[f"{key}.lora_up.weight"] = up.cpu().contiguous()
                    out[f"{key}.lora_down.weight"] = down.cpu().contiguous()
                    out[f"{key}.alpha"] = torch.tensor(float(down.shape[0]))
            elif bias_diff and weight.dim() == 1:  # norms' scales
                out[f"{key}.diff"] = weight.detach().float().cpu().clone()
            bias = getattr(module, "bias", None)
            if bias_diff and isinstance(bias, torch.Tensor):
                out[f"{key}.diff_b"] = bias.detach().float().cpu().clone()
    return out


def _text_name(name: str) -> str:
    # LoRA files name CLIP's modules as transformers < 5 did (under text_model.)
    return name if name.startswith("text_model.") else f"text_model.{name}"


class LoraSave(Node):
    """Extract a LoRA from a model difference and save it: link Model Merge Subtract's
    (fine-tune − base) into ``model_diff`` and/or CLIP Merge Subtract's into
    ``text_encoder_diff``. ``rank`` trades size for fidelity (8 to 64 for most
    fine-tunes; full_diff keeps the difference exactly, as large as the model). Load
    LoRA then applies it to the base (or another model of that family). ComfyUI's node;
    the file goes to models/loras (a leading ``loras/`` in the prefix is that folder)."""

    TYPE = "LoraSave"
    DISPLAY_NAME = "Extract and Save Lora"
    CATEGORY = "_for_testing"
    OUTPUT_NODE = True
    OUTPUTS = ()

    filename_prefix: str = Input("loras/ComfyUI_extracted_lora")
    rank: int = Input(8, min=1, max=MAX_RANK, step=1)
    lora_type: str = Input("standard", choices=("standard", "full_diff"))
    bias_diff: bool = Input(True)
    model_diff: DiffusionModel | None = Input(None, type="MODEL", optional=True,
                                              description="Model Merge Subtract's output")
    text_encoder_diff: TextEncoder | None = Input(None, type="CLIP", optional=True,
                                                  description="CLIP Merge Subtract's output")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        return save_prefix_problem(inputs.get("filename_prefix"), env, "filename_prefix", 32)

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        if self.model_diff is None and self.text_encoder_diff is None:
            raise ValueError("link model_diff (Model Merge Subtract) and/or "
                             "text_encoder_diff (CLIP Merge Subtract): nothing to extract")
        full = self.lora_type == "full_diff"
        state: dict[str, Any] = {}
        if self.model_diff is not None:
            state.update(extract(self.model_diff.unet, self.model_diff.patches, "lora_unet_",
                                 self.rank, full, self.bias_diff))
        clip = self.text_encoder_diff
        if clip is not None:
            for encoder, patches, prefix in ((clip.text_encoder, clip.patches, "lora_te_"),
                                             (clip.text_encoder_2, clip.patches_2,
                                              "lora_te2_")):
                if encoder is not None:
                    state.update(extract(encoder, patches, prefix, self.rank, full,
                                         self.bias_diff, _text_name))
        metadata = {"format": "pt", "steerflow_extracted": self.lora_type,
                    "rank": str(self.rank)}
        return save_lora_file(ctx, self.filename_prefix, state, metadata)


NODE_CLASSES = (LoraSave,)
