"""``sdrt serve --max-batch N``: concurrent compatible generations run as one batched call.

Requests are compatible when they ask for the same size, steps, guidance, scheduler and
modes, with no input or control image and no given latents or embeddings (text to image
only). Their prompts are joined into one Request; each image keeps its own request's noise stream
(``BatchNoise``: every request's SeedNoise draws its own rows, the initial noise and each
step's), so an ancestral scheduler draws what it would alone. On ONNX Runtime's CPU kernels
an image does not depend on the batch it ran in (README, Interpolate), so every request gets
the pixels it would get alone; the tests check that. Progress goes to every request of the
batch; the result is split back by rows.

A worker that takes a batchable job waits up to ``--batch-wait-ms`` for compatible ones to
arrive, until the batch holds ``max_batch`` images; then it runs the batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from sdrt.noise import SeedNoise
from sdrt.service.jobs import Event, GenerationJob


def batch_key(request) -> tuple | None:
    """What must be equal for two requests to share a call; None: never batched."""
    given = (
        request.image,
        request.mask_image,
        request.latents,
        request.prompt_embeds,
        request.negative_prompt_embeds,
        request.pooled_prompt_embeds,
        request.negative_pooled_prompt_embeds,
        request.control,  # ControlNet: control images and settings of its own
    )
    if any(value is not None for value in given):
        return None
    return (
        request.height,
        request.width,
        request.num_inference_steps,
        request.guidance_scale,
        request.scheduler,
        request.strength,
        request.eta,
        request.output_type,
        request.deep_cache,
        request.vae,
        request.negative_prompt is None,  # SDXL zeroes the unconditional input then
    )


class BatchNoise:
    """Each request's own noise stream for its own rows, joined along the batch."""

    def __init__(self, sources: Sequence[tuple[int, SeedNoise]]):
        self._sources = list(sources)  # (rows, source)

    def initial(self, shape: tuple[int, ...]) -> np.ndarray:
        return self._join("initial", shape)

    def step(self, shape: tuple[int, ...]) -> np.ndarray:
        return self._join("step", shape)

    def _join(self, method: str, shape: tuple[int, ...]) -> np.ndarray:
        rows = sum(n for n, _ in self._sources)
        if shape[0] != rows:
            raise ValueError(f"noise for {shape[0]} rows asked of a batch of {rows}")
        parts = [getattr(source, method)((n, *shape[1:])) for n, source in self._sources]
        return np.concatenate(parts)


def merge(requests: Sequence) -> object:
    """One Request with every request's images, in order."""
    first = requests[0]
    return dataclasses.replace(
        first,
        prompts=tuple(p for r in requests for p in r.prompts),
        negative_prompts=tuple(p for r in requests for p in r.negative_prompts),
        seed=None,  # the noise comes from BatchNoise
    )


class BatchJob:
    """Several GenerationJobs run as one call; each gets its own events and images."""

    def __init__(self, jobs: Sequence[GenerationJob]):
        self.jobs = list(jobs)
        self.cancelled = _AllCancelled(self.jobs)

    def run(self) -> None:
        for job in self.jobs:
            job.started.set()
        requests = [job._request for job in self.jobs]
        noise = BatchNoise([(r.batch_size, SeedNoise(r.seed)) for r in requests])
        first = self.jobs[0]
        try:
            generator = first._pipe.generate(
                merge(requests), noise=noise, stage_callback=first._stage_callback
            )
            for progress in generator:
                if progress.result is not None:
                    self._finish(progress, requests)
                    return
                for job in self._live():
                    job._emit(Event("progress", progress))
                if not self._live():
                    generator.close()
                    return
        except Exception as e:  # one call for all: each request gets the error
            for job in self.jobs:
                job._emit(Event("error", error=e))
        finally:
            for job in self.jobs:
                if job.cancelled.is_set():
                    job._emit(Event("cancelled"))

    def _live(self) -> list[GenerationJob]:
        return [job for job in self.jobs if not job.cancelled.is_set()]

    def _finish(self, progress, requests) -> None:
        images, start = progress.result.images, 0
        for job, request in zip(self.jobs, requests, strict=True):
            end = start + request.batch_size
            result = dataclasses.replace(progress.result, images=images[start:end])
            if not job.cancelled.is_set():
                job._emit(Event("done", dataclasses.replace(progress, result=result)))
            start = end


class _AllCancelled:
    """``cancelled`` for Admission: set only when every job of the batch is."""

    def __init__(self, jobs):
        self._jobs = jobs

    def is_set(self) -> bool:
        return all(job.cancelled.is_set() for job in self._jobs)


class Batcher:
    """What Admission asks when it gathers a batch."""

    def __init__(self, max_images: int, wait_seconds: float):
        self.max_images = max_images
        self.wait_seconds = wait_seconds

    @staticmethod
    def key(job) -> tuple | None:
        request = getattr(job, "_request", None)
        return None if request is None else batch_key(request)

    @staticmethod
    def images(job) -> int:
        return job._request.batch_size

    @staticmethod
    def combine(jobs):
        return jobs[0] if len(jobs) == 1 else BatchJob(jobs)
