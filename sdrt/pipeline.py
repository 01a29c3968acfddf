"""The lean runtime: prompt -> CFG denoising loop -> image, with no torch in the process.

    pipe = Pipeline.load("out/sd15")
    image = pipe("a red fox in snow", seed=0).images[0]
    request = pipe.request("a red fox in snow", seed=0)
    for progress in pipe.generate(request):      # streaming / cancel
        ...                                     # progress.result is set on the last one

The loop follows diffusers' StableDiffusionPipeline, ...Img2ImgPipeline and
...InpaintPipeline step for step (and StableDiffusionXLPipeline's conditioning for SDXL
folders), so the same weights, initial noise, scheduler and settings give the same image. A
folder whose U-Net takes LCM's guidance embedding runs LatentConsistencyModelPipeline's
loop instead (SDXL: StableDiffusionXLPipeline's with such a U-Net): no CFG batch, the
guidance scale fed as an embedding (sdrt/guidance_embedding.py). Its array code runs in
the namespace of the session outputs (numpy; cupy on a GPU backend) and copies to the host
only for the final image.

Random numbers come from one numpy Generator per call (``seed``), drawn in this order:
the initial noise (unless ``latents`` is given), then, for schedulers that need it, one
array of the latents' shape per U-Net call (sdrt/noise.py; ``generate(request, noise=)``
takes another source). Walks between keyframes (``interpolate``, ``walk``,
``generate_walk``) live in sdrt/interpolation.py and run through ``generate``.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdrt.adapters.lora_api import LoraMethods
from sdrt.adapters.lora_state import BASE, LoraState, WeightFeeds
from sdrt.arrays import namespace_of, to_host
from sdrt.backends import Selection, Session, select_backend
from sdrt.control.adapter import AdapterFeatures
from sdrt.control.residuals import ControlLoop
from sdrt.deep_cache import DeepCacheLoop
from sdrt.errors import InputError, ModelFolderError, NumericsError
from sdrt.guidance_embedding import (
    GUIDANCE_EMBEDDING_INPUT,
    guidance_embedding_width,
    guidance_scale_embedding,
)
from sdrt.images import mask_to_latent_size, postprocess, preprocess_image, preprocess_mask, to_pil
from sdrt.integrity import open_model_folder
from sdrt.interpolation import (
    DEFAULT_FRAMES,
    FrameProgress,
    InterpolationOutput,
    Walk,
    make_walk,
    run_walk,
)
from sdrt.manifest import (
    ADAPTER_UNET,
    CONTROLNET_UNET,
    DEEP_CACHE_FEATURE_INPUT,
    T2I_ADAPTER,
    Manifest,
    TensorSpec,
)
from sdrt.noise import NoiseSource, SeedNoise
from sdrt.prompts import DEFAULT_CACHE_SIZE, PromptEncoder
from sdrt.recipes import DEFAULT_ETA, DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS
from sdrt.request import Request, make_request, prompt_list
from sdrt.schedulers import (
    LCMScheduler,
    create_scheduler,
    load_scheduler_config,
    scheduler_class_name,
)
from sdrt.stages import StageCallback, StageRecorder, StageTiming
from sdrt.tokenizer import ClipTokenizer
from sdrt.vae_choice import VaeRoute, vae_route

# Components made at load; the VAE encoder only on the first img2img / inpainting call.
EAGER_COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


@dataclass(frozen=True)
class PipelineOutput:
    images: Any  # list of PIL images, or float32 NHWC np.ndarray in [0, 1]
    timings: tuple[StageTiming, ...] = ()  # the call's stages, in order (sdrt/stages.py)


@dataclass(frozen=True)
class Progress:
    """One U-Net call done (see ``step``); the last Progress of a call carries the result."""

    step: int  # denoising steps done so far, counted as the user asked for them
    total_steps: int  # the steps asked for (img2img: int(steps * strength)), not U-Net calls
    timestep: float | None
    result: PipelineOutput | None = None
    # One Progress comes per U-Net call: PNDM's warm-up and Heun's second calls make more
    # calls than steps (Scheduler.steps_done), so ``step`` can repeat.
    unet_calls: int = 0  # U-Net calls done so far
    total_unet_calls: int = 0


class Pipeline(LoraMethods):
    """A loaded model folder. Safe to call from several threads at once.

    Run-time LoRA (load_lora_weights, set_adapters, ...) is in sdrt/adapters/lora_api.py."""

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        selection: Selection,
        sessions: dict[str, Session],
        tokenizers: tuple[ClipTokenizer, ...],
        scheduler_config: dict[str, Any],
        prompt_cache_size: int = DEFAULT_CACHE_SIZE,
        backend_options=None,
    ):
        self.folder = folder
        self.manifest = manifest
        self.selection = selection
        self.backend = selection.backend
        self._sessions = dict(sessions)
        self._sessions_lock = threading.Lock()
        self._backend_options = backend_options
        self.scheduler_config = scheduler_config
        self.default_scheduler = scheduler_config.get("_class_name")
        self.prompt_encoders = _prompt_encoders(manifest, sessions, tokenizers, prompt_cache_size)
        self.prompt_encoder = self.prompt_encoders[0]
        self.is_xl = manifest.family == "sdxl"
        self._adapters_lock = threading.Lock()
        self._lora = LoraState(folder, manifest)

    # ------------------------------------------------------------------------------ load

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike,
        backend: str = "auto",
        *,
        verify_files: str | bool = "changed",
        prompt_cache_size: int = DEFAULT_CACHE_SIZE,
        ort_options=None,
        backend_options=None,
    ) -> Pipeline:
        """Open a model folder written by ``sdrt build``.

        ``verify_files`` checks the graphs against their sha256 in sdrt.json: "changed" (the
        default) hashes only files changed since they last matched (sdrt.integrity), "always"
        reads every byte (about a second per GB), "never" only checks they exist;
        ``backend_options`` are the chosen backend's options (its ``options_type``, e.g.
        sdrt.backends.ort_cpu_options.OrtOptions); ``ort_options`` are OrtOptions that apply
        only when the backend takes them (ort-cpu), whichever backend ``auto`` picks.
        """
        folder = Path(folder)
        manifest = open_model_folder(folder, verify_files)
        tokenizers = tuple(ClipTokenizer.from_folder(folder / t) for t in manifest.tokenizers)
        scheduler_config = load_scheduler_config(folder)
        # Resolved once: the lazily made VAE encoder runs on the same backend.
        selection = select_backend(backend, manifest)
        if backend_options is None and isinstance(ort_options, selection.options_type):
            backend_options = ort_options
        eager = tuple(n for n in EAGER_COMPONENTS if n in manifest.components)
        sessions = selection.open_sessions(folder, manifest, eager, backend_options)
        return cls(
            folder,
            manifest,
            selection,
            sessions,
            tokenizers,
            scheduler_config,
            prompt_cache_size,
            backend_options,
        )

    def _session(self, name: str) -> Session:
        """A component's session, made on first use (once, even under concurrent calls)."""
        session = self._sessions.get(name)
        if session is not None:
            return session
        if name not in self.manifest.components:
            raise ModelFolderError(
                f"{self.folder}: this call needs the {name} graph, which the folder does not have"
            )
        with self._sessions_lock:
            if name not in self._sessions:
                self._sessions.update(
                    self.selection.open_sessions(
                        self.folder, self.manifest, (name,), self._backend_options
                    )
                )
            return self._sessions[name]

    # ------------------------------------------------------------------------------ adapters

    def load_textual_inversion(
        self,
        pretrained_model_name_or_path,
        token: str | list[str] | None = None,
        *,
        weight_name: str | None = None,
        text_encoder: str = "text_encoder",
    ) -> None:
        """Add textual-inversion tokens, as diffusers' ``load_textual_inversion``: a file (or
        folder, or list of them; or a loaded dict / array) of diffusers, A1111 or SDXL
        (clip_l + clip_g) embeddings; ``token`` overrides the file's own. ``text_encoder``
        names the encoder a single embedding is for (diffusers passes the module). Calls in
        flight keep the tokens they started with; an error changes nothing."""
        from sdrt.adapters.embedding_tables import with_embeddings
        from sdrt.adapters.textual_inversion import read_textual_inversions

        embeddings = read_textual_inversions(
            pretrained_model_name_or_path, token, encoder=text_encoder, weight_name=weight_name
        )
        names = [n for n in TEXT_ENCODERS if n in self.manifest.components]
        with self._adapters_lock:
            current = dict(zip(names, self.prompt_encoders, strict=True))
            encoders = with_embeddings(self.folder, self.manifest.components, current, embeddings)
            self.prompt_encoders = tuple(encoders[n] for n in names)
            self.prompt_encoder = self.prompt_encoders[0]

    # ------------------------------------------------------------------------------ call

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        seed: int | np.random.Generator | None = None,
        latents: np.ndarray | None = None,
        scheduler: str | None = None,
        image: Any = None,
        strength: float = 0.8,
        mask_image: Any = None,
        output_type: str = "pil",
        callback=None,
        stage_callback: StageCallback | None = None,
        prompt_embeds: Any = None,
        negative_prompt_embeds: Any = None,
        pooled_prompt_embeds: Any = None,
        negative_pooled_prompt_embeds: Any = None,
        deep_cache_interval: int | None = None,
        deep_cache_branch: int | None = None,
        vae: str | None = None,
        eta: float = DEFAULT_ETA,
        control_image: Any = None,
        controlnet: str | list[str] | None = None,
        controlnet_conditioning_scale: float | list[float] | None = None,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        guess_mode: bool = False,
        adapter_image: Any = None,
        adapter_conditioning_scale: float = 1.0,
        adapter_conditioning_factor: float = 1.0,
    ) -> PipelineOutput:
        """Generate images: diffusers' StableDiffusion(XL)Pipeline, Img2Img and Inpaint
        arguments (README, "Generate"); ``latents`` is the initial noise. ``height``/``width``
        None: the folder's size, or the image's fitted into the built range (request.fit_size).
        ``callback(progress)`` runs after every U-Net call, ``stage_callback(timing)`` after
        every stage (sdrt/stages.py); the result's ``timings`` hold them all.
        ``prompt_embeds`` (images, tokens, width) and the others stand in for the encoded
        prompts, as in diffusers (``embed_prompts`` gives them); arrays in the namespace of
        the backend's outputs (numpy; cupy on a GPU backend). ``deep_cache_interval`` (and
        ``deep_cache_branch``) run DeepCache on a folder built with ``--deep-cache``
        (sdrt/deep_cache.py). ``vae="tiny"`` decodes (and encodes) with the folder's tiny
        VAE (``sdrt build --tiny-vae``; sdrt/vae_choice.py), None or "full" with its own.
        ``eta`` is diffusers': the stochasticity of DDIM (0: deterministic) and TCD (its
        gamma), in [0, 1]; other schedulers ignore it, as diffusers' pipelines do.
        ``control_image`` (one per ControlNet: a list for several) and the other ControlNet
        arguments are diffusers' StableDiffusionControlNet(Img2Img/Inpaint)Pipeline's, on a
        folder built with ``--controlnet``; ``controlnet`` picks ControlNets by name
        (default: all, in build order); sdrt/control/ says more. ``adapter_image`` (diffusers'
        adapter pipelines' ``image``), ``adapter_conditioning_scale`` and
        ``adapter_conditioning_factor`` run the T2I-Adapter of a folder built with
        ``--t2i-adapter`` (sdrt/control/adapter.py).
        ``num_inference_steps``, ``guidance_scale``, ``scheduler`` and ``eta`` left at their
        defaults (20, 7.5, the folder's scheduler, 0) take the folder's recipe where it has
        one (a distilled model's, recorded by ``sdrt build``; sdrt/recipes.py)."""
        # Every argument but the two callbacks, by name, as make_request takes them.
        arguments = {k: v for k, v in locals().items() if k in CALL_DEFAULTS or k == "prompt"}
        request = make_request(self.manifest, **arguments)
        result = None
        for progress in self.generate(request, stage_callback=stage_callback):
            if callback is not None:
                callback(progress)
            result = progress.result
        return result

    def request(self, prompt: str | list[str] | None = None, **arguments: Any) -> Request:
        """A checked Request from ``__call__``'s arguments; those not given take its defaults."""
        unknown = sorted(set(arguments) - set(CALL_DEFAULTS))
        if unknown:
            raise InputError(
                f"unexpected arguments {unknown}; expected some of {sorted(CALL_DEFAULTS)}"
            )
        return make_request(self.manifest, prompt=prompt, **{**CALL_DEFAULTS, **arguments})

    def generate(
        self,
        request: Request,
        *,
        stage_callback: StageCallback | None = None,
        noise: NoiseSource | None = None,
    ) -> Iterator[Progress]:
        """Yield a Progress per U-Net call; the last one carries the result.

        ``request`` comes from ``Pipeline.request`` (or ``sdrt.request.make_request``).
        ``noise`` draws the call's noise in place of the request's seed (sdrt/noise.py).
        Stop iterating (or ``close()`` the generator) to cancel between steps.
        """
        # Checked before the first step, so a bad scheduler or strength fails at the call.
        sched, plan = self._plan(request)
        noise = SeedNoise(request.seed) if noise is None else noise
        # The call keeps the adapters active now, whatever changes while it runs.
        weights = self._lora.current
        return self._run_sharing_weights(
            request, sched, plan, noise, StageRecorder(stage_callback), weights
        )

    def _run_sharing_weights(self, request, sched, plan, noise, stages, weights):
        # On refitted engines (TensorRT LoRA) the call holds the weights from its first step
        # to its last, so that a switch waits for it; elsewhere it keeps ``weights``.
        with self._lora.shared(weights) as weights:
            yield from self._run(request, sched, plan, noise, stages, weights)

    # ------------------------------------------------------------------------------ walks

    def interpolate(
        self,
        prompts: str | list[str],
        seeds: int | list[int] | None = None,
        latents: np.ndarray | None = None,
        num_frames: int = DEFAULT_FRAMES,
        negative_prompt: str | None = None,
        method: str = "slerp",
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        height: int | None = None,
        width: int | None = None,
        scheduler: str | None = None,
        image: Any = None,
        strength: float = 0.8,
        mask_image: Any = None,
        output_type: str = "pil",
        batch_size: int | None = None,
        callback=None,
        stage_callback: StageCallback | None = None,
        eta: float = DEFAULT_ETA,
    ) -> InterpolationOutput:
        """The frames of a walk between keyframes, one per prompt and/or seed (or given
        ``latents``, one row each), ``num_frames`` in all, keyframes included; ``method``
        interpolates the prompts' embeddings ("slerp" or "lerp"), the noise is slerped.
        The other settings are ``__call__``'s; frames run ``batch_size`` per call (default:
        the folder's max batch). sdrt/interpolation.py says more. ``callback(progress)``
        runs after each frame (a FrameProgress)."""
        arguments = {k: v for k, v in locals().items() if k not in WALK_NOT_ARGUMENTS}
        walk = self.walk(**arguments)
        result = None
        for progress in self.generate_walk(walk, stage_callback=stage_callback):
            if callback is not None:
                callback(progress)
            result = progress.result
        return result

    def walk(self, prompts: str | list[str], **arguments: Any) -> Walk:
        """A checked Walk from ``interpolate``'s arguments (scheduler and settings too)."""
        walk = make_walk(self.manifest, prompts, **arguments)
        self._plan(walk.request)
        return walk

    def generate_walk(
        self,
        walk: Walk,
        *,
        stage_callback: StageCallback | None = None,
        keep_frames: bool = True,
    ) -> Iterator[FrameProgress]:
        """Yield a FrameProgress per frame, in order; the last one carries the result.
        ``keep_frames=False`` holds no frame beyond the current batch and leaves the last
        result None: for writing each frame as it comes (``sdrt interpolate``)."""
        return run_walk(self, walk, stage_callback, keep_frames=keep_frames)

    def embed_prompts(self, prompts: str | list[str]) -> PromptEmbeddings:
        """The U-Net's text conditioning for ``prompts`` (one row each), as ``__call__``
        computes it: ``prompt_embeds`` and, for SDXL, ``pooled_prompt_embeds``."""
        prompts = tuple(prompt_list(prompts, "prompts"))
        with self._lora.shared(self._lora.current) as weights:
            embeddings, pooled = self._encode_prompts(prompts, None, weights)
        return PromptEmbeddings(embeddings, pooled)

    # ------------------------------------------------------------------------------ stages

    # The public seams: each runs one stage of a call as ``generate`` runs it, for code that
    # drives part of a call itself (sdrt adopt's probe, the service's warm-up, the int8 build's
    # calibration, benchmarks), in the way mlx-examples' stable_diffusion exposes
    # ``generate_latents`` and ``decode``. Code outside this class uses these, never the
    # underscore methods behind them (tests/test_public_seams.py checks).

    def session(self, name: str) -> Session:
        """The session of component ``name`` ("text_encoder", "unet", "vae_decoder",
        "vae_encoder", ...), opened on first use: ModelFolderError where the folder has no
        such graph. Its ``run(feeds)`` takes and returns arrays by the graph's names."""
        return self._session(name)

    def replace_session(self, name: str, session: Session) -> Session:
        """Run ``session`` for component ``name`` from now on, in this Pipeline only (a
        wrapper that records or checks the feeds, say); returns the session it replaces.
        The text encoders run in the prompt encoders made at load, so they are refused."""
        if name in TEXT_ENCODERS:
            raise InputError(
                f"replace_session: expected a component other than the text encoders "
                f"{TEXT_ENCODERS} (their prompt encoders hold their sessions), got {name!r}"
            )
        replaced = self._session(name)
        with self._sessions_lock:
            self._sessions[name] = session
        return replaced

    def plan(self, request: Request):
        """(scheduler, plan) of ``request``: its scheduler, made from the folder's config,
        and the plan (timesteps, sigmas, ...) that scheduler's steps take."""
        return self._plan(request)

    def condition(self, request: Request) -> Conditioning:
        """The U-Net's text conditioning of ``request`` (uncond rows first under guidance),
        with the run-time LoRA adapters active now, as a call started now would make it."""
        with self._lora.shared(self._lora.current) as weights:
            return self._condition(request, StageRecorder(), weights)

    def predict_noise(self, sample, timestep, conditioning: Conditioning):
        """One U-Net call of a denoising step: the U-Net's output (float32, the namespace of
        ``sample``) for ``sample`` (already scaled by the scheduler, both guidance halves as
        one batch where ``conditioning`` has them) at ``timestep``."""
        return self._unet(sample, timestep, conditioning)

    def encode_image(self, pixels, vae: str = "full"):
        """VAE latents, scaled, of (1, 3, H, W) pixels in [-1, 1], by the ``vae`` ("full" or
        "tiny") VAE's encoder: the distribution's mode, so deterministic."""
        return self._encode_image(pixels, vae)

    def decode(self, latents, vae: str = "full") -> np.ndarray:
        """Latents -> float32 NHWC images in [0, 1] on the host, by the ``vae`` ("full" or
        "tiny") VAE's decoder; NumericsError on NaN/Inf."""
        return self._decode(latents, vae_route(self.manifest, vae))

    # ------------------------------------------------------------------------------ loop

    def _plan(self, request: Request):
        sched = make_scheduler(
            request.scheduler,
            self.scheduler_config,
            self.folder,
            self.manifest,
            request.scheduler_config,
        )
        # Only LatentConsistencyModelImg2ImgPipeline (SD 1.x) passes strength to LCMScheduler;
        # StableDiffusionXLImg2ImgPipeline, which runs LCM SDXL, keeps the common schedule.
        lcm_img2img = (
            request.guidance_embedding
            and not self.is_xl
            and request.image is not None
            and request.mask_image is None
            and isinstance(sched, LCMScheduler)
        )
        if lcm_img2img:  # as LatentConsistencyModelImg2ImgPipeline: strength in the schedule
            return sched, sched.consistency_img2img_plan(
                request.num_inference_steps, request.strength
            )
        plan = sched.plan(request.num_inference_steps, strength=request.strength, eta=request.eta)
        return sched, plan

    def _run(
        self,
        request: Request,
        sched,
        plan,
        source: NoiseSource,
        stages: StageRecorder,
        weights: WeightFeeds = BASE,
    ) -> Iterator[Progress]:
        """The loop, step by step: condition, initial latents, denoise, decode."""
        conditioning = self._condition(request, stages, weights)
        xp = namespace_of(conditioning.embeddings)
        noise = self._initial_noise(request, source, xp)
        x, inpaint = self._initial_latents(request, sched, plan, noise, xp, stages)
        state = sched.initial_state(plan)
        total = len(plan.timesteps)  # U-Net calls
        steps = sched.steps_in(plan)  # what the user asked for, as progress counts
        cache = (
            None
            if request.deep_cache is None
            else DeepCacheLoop(request.deep_cache, plan.timesteps)
        )
        control = None
        if request.control is not None:
            control = ControlLoop(
                request.control,
                request.width,
                request.height,
                request.batch_size,
                request.do_classifier_free_guidance,
                total,
                xp,
            )
        adapter = None
        if request.adapter is not None:
            with stages.stage("t2i_adapter"):
                adapter = AdapterFeatures(
                    request.adapter,
                    request.width,
                    request.height,
                    request.batch_size,
                    request.do_classifier_free_guidance,
                    request.num_inference_steps,
                    self._graph_runner_without_timestep(T2I_ADAPTER),
                    xp,
                )
        for i in range(total):
            x, state = self._denoise_step(
                request,
                sched,
                plan,
                state,
                x,
                i,
                conditioning,
                inpaint,
                source,
                stages,
                cache,
                control,
                adapter,
            )
            if i < total - 1:
                yield Progress(
                    sched.steps_done(plan, i + 1),
                    steps,
                    float(plan.timesteps[i]),
                    unet_calls=i + 1,
                    total_unet_calls=total,
                )
        with stages.stage("vae_decode"):
            images = self._decode(x, vae_route(self.manifest, request.vae))
        output = images if request.output_type == "np" else to_pil(images)
        result = PipelineOutput(output, tuple(stages.timings))
        yield Progress(
            steps,
            steps,
            float(plan.timesteps[-1]),
            result,
            unet_calls=total,
            total_unet_calls=total,
        )

    def _initial_noise(self, request: Request, source: NoiseSource, xp):
        """The call's initial noise: ``latents`` as given, else drawn (from the call's seed)."""
        if request.latents is not None:
            return xp.asarray(request.latents, dtype=xp.float32)
        factor = self.manifest.vae_scale_factor
        shape = (
            request.batch_size,
            self.manifest.latent_channels,
            request.height // factor,
            request.width // factor,
        )
        return xp.asarray(source.initial(shape))

    def _initial_latents(self, request: Request, sched, plan, noise, xp, stages: StageRecorder):
        """(latents to start from, inpainting state or None).

        txt2img starts from scaled noise; img2img from the image's latents noised to the
        first planned timestep; inpainting as img2img, or from pure noise at strength 1.
        """
        if request.image is None:
            return noise * plan.init_noise_sigma, None
        pixels = preprocess_image(request.image, request.width, request.height)
        with stages.stage("vae_encode"):
            image_latents = self._encode_image(xp.asarray(pixels), request.vae)
        image_latents = xp.concatenate([image_latents] * request.batch_size, axis=0)
        if request.mask_image is not None and request.strength == 1.0:
            x = noise * plan.init_noise_sigma  # as the inpainting pipeline: pure noise
        else:
            x = sched.add_noise(plan, image_latents, noise, 0)
        inpaint = None
        if request.mask_image is not None:
            inpaint = self._prepare_inpainting(request, pixels, image_latents, noise, xp, stages)
        return x, inpaint

    def _denoise_step(
        self,
        request,
        sched,
        plan,
        state,
        x,
        i: int,
        conditioning,
        inpaint,
        source,
        stages,
        cache=None,
        control: ControlLoop | None = None,
        adapter: AdapterFeatures | None = None,
    ):
        """One U-Net call (both guidance halves as one batch) and one scheduler step;
        ``cache`` (a DeepCacheLoop) picks the full or the shallow U-Net; ``control`` runs
        the call's ControlNets first, and their residuals go to the U-Net that takes them;
        ``adapter``'s features, where they feed this call, go to the U-Net taking them."""
        xp = namespace_of(x)
        cfg = request.do_classifier_free_guidance
        model_input = xp.concatenate([x, x], axis=0) if cfg else x
        model_input = sched.scale_model_input(plan, model_input, i)
        residuals, residual_unet = None, CONTROLNET_UNET
        if adapter is not None:
            residuals, residual_unet = adapter.at(i), ADAPTER_UNET
        if control is not None and control.runs_at(i):
            alone = sched.scale_model_input(plan, x, i) if control.conditional_only else None
            with stages.stage("controlnet", step=i):
                residuals = control.residuals(
                    i, model_input, alone, conditioning, self._graph_runner(plan.timesteps[i])
                )
        if inpaint is not None and inpaint.unet_condition is not None:
            model_input = xp.concatenate([model_input, inpaint.unet_condition], axis=1)
        with stages.stage("unet", step=i):
            noise_pred = self._unet(
                model_input, plan.timesteps[i], conditioning, cache, i, residuals, residual_unet
            )
        if cfg:
            uncond, text = noise_pred[: request.batch_size], noise_pred[request.batch_size :]
            noise_pred = uncond + request.guidance_scale * (text - uncond)
        step_noise = None
        if sched.draws_noise(plan):
            step_noise = xp.asarray(source.step(x.shape))
        with stages.stage("scheduler_step", step=i):
            result = sched.step(plan, state, noise_pred, i, x, noise=step_noise)
        x = result.prev_sample
        if inpaint is not None and inpaint.unet_condition is None:
            x = inpaint.blend(sched, plan, x, i)
        return x, result.state

    # ------------------------------------------------------------------------------ parts

    def _condition(
        self, request: Request, stages: StageRecorder, weights: WeightFeeds = BASE
    ) -> Conditioning:
        """The U-Net's text conditioning (uncond rows first under CFG), and its weights."""
        encoders = self.prompt_encoders  # one set for the call, whatever loads meanwhile
        embeddings, pooled = self._prompt_side(request, stages, encoders, weights)
        xp = namespace_of(embeddings)
        if request.do_classifier_free_guidance:
            uncond, uncond_pooled = self._negative_side(
                request, embeddings, pooled, stages, encoders, weights
            )
            xp = namespace_of(uncond)  # the session's, where the negative was encoded
            embeddings = xp.concatenate([uncond, xp.asarray(embeddings)], axis=0)
            if pooled is not None:
                pooled = xp.concatenate([uncond_pooled, xp.asarray(pooled)], axis=0)
        added = {}
        if self.is_xl:
            added["text_embeds"] = pooled
            added["time_ids"] = _time_ids(request.height, request.width, len(embeddings), xp)
        if request.guidance_embedding:  # LCM: the guidance scale goes in as an embedding
            width = guidance_embedding_width(self.manifest)
            added[GUIDANCE_EMBEDDING_INPUT] = guidance_scale_embedding(
                request.guidance_scale, len(embeddings), width, xp
            )
        return Conditioning(embeddings, added, weights.of("unet"))

    def _prompt_side(self, request: Request, stages: StageRecorder, encoders, weights):
        """(embeddings, pooled or None) of the prompts: given, or encoded."""
        if request.prompt_embeds is None:
            return self._encode_prompts(request.prompts, stages, weights, encoders)
        return _as_float32(request.prompt_embeds), _as_float32(request.pooled_prompt_embeds)

    def _negative_side(
        self, request: Request, embeddings, pooled, stages: StageRecorder, encoders, weights
    ):
        """(embeddings, pooled or None) of the negative prompts: given, zeros (SDXL without
        a negative prompt), or encoded; InputError where they cannot join the prompts'."""
        xp = namespace_of(embeddings)
        if request.negative_prompt_embeds is not None:
            return (
                _as_float32(request.negative_prompt_embeds),
                _as_float32(request.negative_pooled_prompt_embeds),
            )
        zero_negative = request.negative_prompt is None and self.manifest.family_options.get(
            "force_zeros_for_empty_prompt", False
        )
        if zero_negative:  # SDXL: "no negative prompt" is zeros, not the empty prompt
            return xp.zeros_like(embeddings), None if pooled is None else xp.zeros_like(pooled)
        uncond, uncond_pooled = self._encode_prompts(
            request.negative_prompts, stages, weights, encoders
        )
        if uncond.shape != embeddings.shape:  # given prompt_embeds of another token count
            raise InputError(
                f"prompt_embeds: expected the shape of the encoded negative prompts, "
                f"{tuple(uncond.shape)}, to join them; got {tuple(embeddings.shape)} "
                "(pass negative_prompt_embeds= of prompt_embeds' shape)"
            )
        return uncond, uncond_pooled

    def _prepare_inpainting(
        self, request, pixels, image_latents, noise, xp, stages: StageRecorder
    ) -> _Inpainting:
        mask = preprocess_mask(request.mask_image, request.width, request.height)
        latent_mask = xp.asarray(mask_to_latent_size(mask, self.manifest.vae_scale_factor))
        latent_mask = xp.concatenate([latent_mask] * request.batch_size, axis=0)
        if self.manifest.unet_in_channels == self.manifest.latent_channels:
            return _Inpainting(latent_mask, image_latents, noise, unet_condition=None)
        expected = 2 * self.manifest.latent_channels + 1
        if self.manifest.unet_in_channels != expected:
            raise ModelFolderError(
                f"{self.folder}: expected a U-Net with {self.manifest.latent_channels} or "
                f"{expected} input channels, got {self.manifest.unet_in_channels}"
            )
        masked_pixels = xp.asarray(pixels * (mask < 0.5))
        with stages.stage("vae_encode"):
            masked_latents = self._encode_image(masked_pixels, request.vae)
        masked_latents = xp.concatenate([masked_latents] * request.batch_size, axis=0)
        condition = xp.concatenate([latent_mask, masked_latents], axis=1)
        if request.do_classifier_free_guidance:
            condition = xp.concatenate([condition, condition], axis=0)
        return _Inpainting(latent_mask, image_latents, noise, unet_condition=condition)

    def _encode_prompts(
        self,
        prompts: tuple[str, ...],
        stages: StageRecorder | None,
        weights: WeightFeeds,
        encoders=None,
    ):
        """(hidden states, pooled or None): the encoders' states joined on the last axis."""
        hidden, pooled = [], None
        for encoder in encoders or self.prompt_encoders:
            name = encoder.session.name
            states, pooled_states = encoder.encode_with_pooled(
                list(prompts), stages, weights.of(name), weights.key_of(name)
            )
            hidden.append(states)
            pooled = pooled_states if pooled_states is not None else pooled
        if len(hidden) == 1:
            return hidden[0], pooled
        return namespace_of(hidden[0]).concatenate(hidden, axis=-1), pooled

    def _graph_runner_without_timestep(self, name: str):
        """run(feeds) -> outputs by name of the graph ``name``, the feeds cast as it declares
        them (the T2I-Adapter's one run per call)."""
        session = self._session(name)
        specs = {s.name: s for s in session.inputs}

        def run(feeds: dict[str, Any]) -> Mapping[str, Any]:
            return session.run({k: v.astype(specs[k].dtype) for k, v in feeds.items()})

        return run

    def _graph_runner(self, timestep):
        """run(component, feeds) -> float32 outputs by name, with the timestep fed and
        the feeds cast as the graph declares them (the ControlNets' runs of one step);
        feeds the graph does not take are left out (SDXL's added conditions, for instance,
        which only SDXL ControlNets take)."""

        def run(name: str, feeds: dict[str, Any]) -> dict[str, Any]:
            session = self._session(name)
            specs = {s.name: s for s in session.inputs}
            xp = namespace_of(feeds["sample"])
            typed = {k: v.astype(specs[k].dtype) for k, v in feeds.items() if k in specs}
            batch = feeds["sample"].shape[0]
            typed["timestep"] = _timestep_feed(specs["timestep"], timestep, batch, xp)
            return {k: v.astype(xp.float32) for k, v in session.run(typed).items()}

        return run

    def _unet(
        self,
        sample,
        timestep,
        conditioning: Conditioning,
        cache=None,
        step: int = 0,
        residuals: Mapping[str, Any] | None = None,
        residual_unet: str = CONTROLNET_UNET,
    ):
        """The noise prediction; ``residuals`` (ControlNets' or a T2I-Adapter's features)
        go to ``residual_unet``, the graph that takes them."""
        name = "unet" if cache is None else cache.session_name(step)
        session = self._session(residual_unet if residuals is not None else name)
        encoder_hidden_states = conditioning.embeddings
        specs = {s.name: s for s in session.inputs}
        xp = namespace_of(sample)
        feeds = {
            "sample": sample.astype(specs["sample"].dtype),
            "timestep": _timestep_feed(specs["timestep"], timestep, sample.shape[0], xp),
            "encoder_hidden_states": encoder_hidden_states.astype(
                specs["encoder_hidden_states"].dtype
            ),
        }
        _check_guidance_embedding(specs, conditioning)
        for name, value in conditioning.added.items():
            feeds[name] = value.astype(specs[name].dtype)
        feeds.update(conditioning.weights)  # run-time LoRA's weights; none without adapters
        if cache is not None:
            feeds.update(
                cache.feeds(step, specs.get(DEEP_CACHE_FEATURE_INPUT, specs["sample"]).dtype)
            )
        for key, value in (residuals or {}).items():  # sdrt/control/
            feeds[key] = value.astype(specs[key].dtype)
        outputs = session.run(feeds)
        if cache is not None:
            cache.keep(step, outputs)
        return outputs[session.outputs[0].name].astype(xp.float32)

    def _encode_image(self, pixels, vae: str = "full"):
        """VAE latents of (1, 3, H, W) pixels in [-1, 1]: the distribution's mode, scaled.

        The mode (the mean) is diffusers' ``sample_mode="argmax"``: deterministic. Graphs
        give it as ``latent_sample``, or only the distribution's parameters (mean and
        log-variance concatenated on channels, Optimum's ``latent_parameters``).
        """
        route = vae_route(self.manifest, vae)
        if route.encoder is None:
            raise ModelFolderError(f"{self.folder}: the {vae} VAE has no encoder graph")
        session = self._session(route.encoder)
        xp = namespace_of(pixels)
        spec = session.inputs[0]
        outputs = session.run({spec.name: pixels.astype(spec.dtype)})
        channels = self.manifest.latent_channels
        out = outputs.get("latent_sample")
        if out is None:
            out = outputs.get("latent_parameters", outputs[session.outputs[0].name])
        out = out.astype(xp.float32)
        if out.shape[1] == 2 * channels:
            out = out[:, :channels]
        elif out.shape[1] != channels:
            raise ModelFolderError(
                f"{self.folder}: the VAE encoder gives {out.shape[1]} channels, expected "
                f"{channels} (latents) or {2 * channels} (mean and log-variance)"
            )
        if route.shift_factor is not None:
            out = out - route.shift_factor
        return out * route.scaling_factor

    def _decode(self, latents, route: VaeRoute | None = None) -> np.ndarray:
        """Latents -> float32 NHWC images in [0, 1] on the host; NaN/Inf is an error."""
        route = route or vae_route(self.manifest, "full")
        session = self._session(route.decoder)
        xp = namespace_of(latents)
        scaled = latents / route.scaling_factor
        if route.shift_factor is not None:
            scaled = scaled + route.shift_factor
        spec = session.inputs[0]
        decoded = session.run({spec.name: scaled.astype(spec.dtype)})[session.outputs[0].name]
        decoded = to_host(decoded).astype(np.float32)
        finite = np.isfinite(decoded).reshape(len(decoded), -1).all(axis=1)
        if not finite.all():
            bad = [int(i) for i in np.flatnonzero(~finite)]
            latents_finite = bool(xp.isfinite(latents).all())
            raise NumericsError(
                f"NaN or Inf in the decoded image(s) {bad} of a batch of {len(decoded)}"
                + (
                    ": the latents were finite, so the VAE decoder overflowed "
                    "(an fp32 VAE avoids this)"
                    if latents_finite
                    else ": the denoising loop already produced NaN/Inf latents"
                )
            )
        return postprocess(decoded)


@dataclass(frozen=True)
class Conditioning:
    """What the U-Net is conditioned on, besides the latents and the timestep
    (``Pipeline.condition`` makes it, ``Pipeline.predict_noise`` takes it)."""

    embeddings: Any  # encoder hidden states (2B rows under CFG: uncond first)
    # SDXL's text_embeds and time_ids, an LCM U-Net's timestep_cond; else empty
    added: dict[str, Any]
    weights: Mapping[str, Any]  # the U-Net's LoRA weight feeds (sdrt/adapters); often empty


@dataclass(frozen=True)
class _Inpainting:
    """What the inpainting loop needs beyond txt2img."""

    mask: Any  # (B, 1, h, w) latent-size mask, 1 = repaint
    image_latents: Any  # (B, C, h, w) the original image's latents
    noise: Any  # the noise the known region is re-noised with
    unet_condition: Any  # 9-channel U-Nets: mask + masked-image latents, CFG-doubled; else None

    def blend(self, sched, plan, x, i: int):
        """4-channel U-Nets: put back the known region, noised to the next step's level."""
        known = self.image_latents
        if i < len(plan.timesteps) - 1:
            known = sched.add_noise(plan, known, self.noise, i + 1)
        return (1 - self.mask) * known + self.mask * x


@dataclass(frozen=True)
class PromptEmbeddings:
    """Encoded prompts, one row each, as ``__call__``'s ``prompt_embeds`` takes them."""

    prompt_embeds: Any  # (prompts, tokens, width) float32
    pooled_prompt_embeds: Any = None  # SDXL: (prompts, pooled width); else None


# __call__'s arguments but the prompt and the callbacks, with their defaults: what
# Pipeline.request fills in.
CALL_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(Pipeline.__call__).parameters.items()
    if parameter.default is not parameter.empty
    and name not in ("prompt", "callback", "stage_callback")
}


# interpolate()'s parameters that are not make_walk's.
WALK_NOT_ARGUMENTS = ("self", "callback", "stage_callback")


def _as_float32(value):
    """A given array as float32 in its own namespace (None stays None)."""
    return None if value is None else namespace_of(value).asarray(value, dtype="float32")


def make_scheduler(
    name: str | None,
    scheduler_config: dict[str, Any],
    folder: Path,
    manifest: Manifest,
    overrides: Mapping[str, Any] | None = None,
):
    """The scheduler a call runs: ``name`` (class name or alias), or the folder's own, with
    ``overrides`` (``Request.scheduler_config``: a recipe's keys) set on its config.

    A scheduler of another class is made as diffusers' ``Class.from_config(pipe.scheduler
    .config)`` makes it: without the keys the build's corrections added to a config that
    lacked them (``Manifest.defaulted_scheduler_keys``), so they take the class's default.
    The folder's own class, named or not, keeps its corrected config."""
    own = scheduler_config.get("_class_name")
    name = name or own
    if name is None:
        raise ModelFolderError(
            f"{folder}: scheduler/scheduler_config.json names no _class_name; pass scheduler="
        )
    defaulted = manifest.defaulted_scheduler_keys
    if defaulted and scheduler_class_name(name) != own:
        scheduler_config = {k: v for k, v in scheduler_config.items() if k not in defaulted}
    return create_scheduler(name, scheduler_config, **(overrides or {}))


def _time_ids(height: int, width: int, rows: int, xp):
    """SDXL's micro-conditioning as diffusers sets it by default: original size = target
    size = (height, width), crop top-left (0, 0)."""
    row = xp.asarray([[height, width, 0, 0, height, width]], dtype=xp.float32)
    return xp.concatenate([row] * rows, axis=0)


def _prompt_encoders(manifest, sessions, tokenizers, cache_size) -> tuple[PromptEncoder, ...]:
    """One PromptEncoder per (tokenizer, text encoder), with the outputs the folder names."""
    names = [n for n in TEXT_ENCODERS if n in manifest.components]
    if len(names) != len(tokenizers):
        raise ModelFolderError(
            f"sdrt.json: expected one tokenizer per text encoder ({names}), "
            f"got tokenizers {list(manifest.tokenizers)}"
        )
    hidden_outputs = manifest.family_options.get("prompt_embeds_outputs", {})
    pooled_outputs = manifest.family_options.get("pooled_prompt_embeds_output", {})
    encoders = []
    for name, tokenizer in zip(names, tokenizers, strict=True):
        try:
            encoders.append(
                PromptEncoder(
                    tokenizer,
                    sessions[name],
                    cache_size,
                    hidden_output=hidden_outputs.get(name, "last_hidden_state"),
                    pooled_output=pooled_outputs.get(name),
                )
            )
        except ValueError as e:
            raise ModelFolderError(
                f"sdrt.json family_options do not match the graphs: {e}"
            ) from None
    if manifest.family == "sdxl" and not any(e.pooled_output for e in encoders):
        raise ModelFolderError(
            "sdrt.json: an SDXL folder must name the pooled output in "
            "family_options.pooled_prompt_embeds_output"
        )
    return tuple(encoders)


def _check_guidance_embedding(specs: Mapping[str, TensorSpec], conditioning: Conditioning):
    """InputError where a Conditioning and the U-Net disagree on LCM's guidance embedding
    (one made by another folder's Pipeline.condition, say), before the graph runs."""
    wanted = GUIDANCE_EMBEDDING_INPUT in specs
    if wanted == (GUIDANCE_EMBEDDING_INPUT in conditioning.added):
        return
    if wanted:
        raise InputError(
            f"conditioning: expected the guidance embedding ({GUIDANCE_EMBEDDING_INPUT}) this "
            "LCM-distilled U-Net takes, as Pipeline.condition of its folder makes it; got a "
            "Conditioning without one"
        )
    raise InputError(
        f"conditioning: expected no guidance embedding ({GUIDANCE_EMBEDDING_INPUT}): this "
        "U-Net is not LCM-distilled and has no such input; got a Conditioning with one"
    )


def _timestep_feed(spec: TensorSpec, timestep, batch: int, xp):
    """The timestep as the graph declares it: a scalar, or one value (or one per sample)."""
    value = xp.asarray(timestep, dtype=xp.float64)
    if len(spec.shape) == 0:
        return value.astype(spec.dtype)
    (dim,) = spec.shape
    count = dim if isinstance(dim, int) else 1
    if isinstance(dim, str) and dim == "batch":
        count = batch
    return xp.full((count,), value, dtype=spec.dtype)
