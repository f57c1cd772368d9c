"""Attend-and-Excite node: encode a prompt and excite some of its words while sampling."""

from __future__ import annotations

from typing import Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.conditioning import CLIPTextEncode, encode_text
from nodes.diffusion.handles import CondEntry, Conditioning, TextEncoder


class AttendAndExcite(Node):
    """Encode a prompt (as Encode Prompt does) with Attend-and-Excite attached: before
    each early step the sampler nudges the latent until every word in ``words`` gets a
    strong cross-attention peak, so no subject of the prompt is left out or merged into
    another (Chefer et al. 2023; diffusers' ``StableDiffusionAttendAndExcitePipeline``).

    Use its CONDITIONING as the sampler's **positive** prompt (it may still go through
    ControlNet or Conditioning nodes). ``words`` are words or short phrases of the
    prompt, comma-separated ("cat, frog"); each must occur once (a repeated word is an
    error: name it with a longer phrase, "blue square"). Excite the subjects that go
    missing, usually the nouns, not every word. The defaults are the pipeline's, tuned
    for SD 1.x at 50 steps: ``thresholds`` ("step:threshold, ...") are the steps at which
    the latent is refined repeatedly (at most ``max_refinement_steps`` updates) until
    every word's attention peak reaches the threshold, ``max_iter_to_alter`` how many
    steps get an update at all and ``scale_factor`` its size; with fewer steps, move
    the thresholds' steps earlier. Larger values excite harder but soon add noise.
    ``attn_res`` 0 reads the maps closest to the pipeline's 16x16. Each altered step
    costs an extra UNet pass with gradients, each refinement update another (a 25-step
    image on the built-in model takes about 5x as long).

    On the built-in shapes model it changes little (two-shape prompts right: 80% →
    82%): its errors are small shapes drawn as diamonds, and its shape words get so
    little attention that the loss has almost no gradient.
    """

    TYPE = "AttendAndExcite"
    DISPLAY_NAME = "Attend-and-Excite"
    SEARCH_ALIASES = ("A&E", "attend and excite")
    CATEGORY = "conditioning/attend_excite"
    OUTPUTS = (Output("CONDITIONING"),)

    clip: TextEncoder = Input(type="CLIP")
    text: str = Input("", multiline=True, description="The prompt (Encode Prompt's syntax)")
    words: str = Input("", description="Words or phrases of the prompt to excite, "
                       "comma-separated, e.g. 'circle, square'")
    max_iter_to_alter: int = Input(25, min=0, max=10000,
                                   description="Steps (from the first) whose latent is updated")
    thresholds: str = Input("0:0.05, 10:0.5, 20:0.8",
                            description="step:threshold pairs: refine the latent at that step "
                            "until every word's attention peak reaches the threshold")
    scale_factor: float = Input(20.0, min=0.0, max=1000.0, step=0.5,
                                description="Size of each latent update (the pipeline's 20)")
    attn_res: int = Input(0, min=0, max=512,
                          description="Height of the attention maps read, in tokens (SD 1.x "
                          "at 512x512: 16); 0: the UNet's resolution closest to 16")
    max_refinement_steps: int = Input(20, min=1, max=1000,
                                      description="Most updates per refinement step")
    normalize_eot: bool = Input(False, description="Softmax over the prompt's own tokens only "
                                "(the original implementation's option for SD 2.1); off: over "
                                "every token but the start and the last, as the pipeline")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        from nodes.diffusion.attend_excite import light_tokenizer, parse_thresholds, token_indices

        problems = CLIPTextEncode.validate_inputs(inputs, env)
        thresholds = inputs.get("thresholds")
        if isinstance(thresholds, str):
            try:
                parse_thresholds(thresholds)
            except ValueError as exc:
                problems.append(("thresholds", str(exc)))
        text, words = inputs.get("text"), inputs.get("words")
        if isinstance(text, str) and isinstance(words, str) and not problems:
            # Validation does not load embeddings (each counts as one token here): positions
            # after one may shift, but whether a word is missing or repeated does not.
            _, found = token_indices(light_tokenizer(), text, words)
            problems.extend(("words", message) for message in found)
        return problems

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        return CLIPTextEncode.fingerprint(inputs, env)

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        from nodes.diffusion.attend_excite import AttendAndExcite as Extension
        from nodes.diffusion.attend_excite import parse_thresholds, prompt_tokens, token_indices
        from nodes.diffusion.embeddings import EmbeddingLibrary

        if self.clip.text_encoder is None:
            raise ValueError("Attend-and-Excite needs a CLIP with CLIP-L (SD 1.x/2.x or the "
                             "SDXL base); the SDXL refiner's has only OpenCLIP bigG")
        dim = int(self.clip.text_encoder.get_input_embeddings().weight.shape[1])
        library = EmbeddingLibrary(ctx.env, dim)
        indices, problems = token_indices(self.clip.tokenizer, self.text, self.words, library)
        if problems:
            raise ValueError("; ".join(problems))
        options: dict[str, Any] = {}
        if self.clip.text_encoder_2 is not None:  # SDXL: both encoders, the pooled output
            from nodes.diffusion.sdxl import encode_sdxl

            embeds, options["pooled_output"] = encode_sdxl(
                self.clip, self.text, None, lambda width: EmbeddingLibrary(ctx.env, width))
        else:
            embeds = encode_text(self.clip, self.text, library)
        text_tokens = None
        if self.normalize_eot:
            text_tokens = [t.index for t in prompt_tokens(self.clip.tokenizer, self.text,
                                                          library)[1]]
        extension = Extension(
            embeds, indices, max_iter_to_alter=self.max_iter_to_alter,
            thresholds=parse_thresholds(self.thresholds), scale_factor=self.scale_factor,
            attn_res=self.attn_res, max_refinement_steps=self.max_refinement_steps,
            text_tokens=text_tokens, label=self.words)
        return (Conditioning((CondEntry(embeds, {**options, "extensions": (extension,)}),)),)


NODE_CLASSES = (AttendAndExcite,)
