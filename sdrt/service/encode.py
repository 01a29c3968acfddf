"""Images out: base64 PNGs carrying their settings (A1111 "parameters", as `sdrt generate`
writes them), from the pipeline's float images, rounded as ``Pipeline.__call__`` rounds."""

from __future__ import annotations

import base64
import io

from PIL import PngImagePlugin

from sdrt.images import to_pil
from sdrt.infotext import GenerationParameters
from sdrt.pipeline import make_scheduler


def encode_images(pipe, generation, images) -> list[str]:
    """One base64 PNG per image of a batch (float32 NHWC in [0, 1])."""
    request = generation.request
    scheduler = make_scheduler(request.scheduler, pipe.scheduler_config, pipe.folder, pipe.manifest)
    pictures = to_pil(images)
    encoded = []
    for index, picture in enumerate(pictures):
        parameters = GenerationParameters.of_request(
            request,
            pipeline_folder=pipe.folder,
            manifest=pipe.manifest,
            scheduler=scheduler,
            prompt=generation.prompt,
            negative_prompt=generation.negative_prompt,
            seed=generation.seed,
            from_image=generation.edit,
            batch_size=len(pictures),
            batch_pos=index,
        )
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters.text())
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", pnginfo=info)
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return encoded
