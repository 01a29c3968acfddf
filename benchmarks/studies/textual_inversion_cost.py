"""What run-time textual inversion costs on SD 1.5's text encoder (CLIP ViT-L, random weights).

    python -m sdrt.benchmarks.studies.textual_inversion_cost [--repeats 20]

Exports the text encoder alone (no U-Net: minutes and gigabytes less than a full build),
with its token table as an optional input (export/token_embedding_input.py), then times in
one process: ONNX Runtime calls on the stored table and on a fed table with two added rows
(what ``load_textual_inversion`` feeds), and making that table (``enlarged_table``).
Medians of interleaved runs; print one line each.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    import onnxruntime as ort
    import torch
    import transformers
    from sdrt.engines.onnx_files import EXTERNAL_DATA_FILE, save_graph
    from sdrt.export.architectures import CLIP_VIT_L_TEXT
    from sdrt.export.components import ShapeCase, TextEncoderExport
    from sdrt.export.onnx import cleanup_graph, export_graph
    from sdrt.export.token_embedding_input import promote_token_embedding

    from sdrt.adapters.textual_inversion import TOKEN_EMBEDDING_INPUT, enlarged_table

    config = transformers.CLIPTextConfig(**dict(CLIP_VIT_L_TEXT))
    torch.manual_seed(0)
    model = transformers.CLIPTextModel(config).eval()
    table = model.get_input_embeddings().weight.detach().numpy().copy()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        wrapper = TextEncoderExport("text_encoder", model, with_hidden_states=False)
        export_graph(
            wrapper, ShapeCase(batch=2, height=64, width=64), folder / "raw/model.onnx", opset=17
        )
        cleaned = cleanup_graph(folder / "raw/model.onnx").model
        promote_token_embedding(cleaned, config.vocab_size, config.hidden_size, EXTERNAL_DATA_FILE)
        saved = save_graph(cleaned, folder / "text_encoder")
        session = ort.InferenceSession(str(saved.onnx_file), providers=["CPUExecutionProvider"])
        ids = np.random.default_rng(0).integers(0, config.vocab_size, (2, 77), dtype=np.int64)
        vectors = np.random.default_rng(1).standard_normal(
            (2, config.hidden_size), dtype=np.float32
        )
        added = [config.vocab_size, config.vocab_size + 1]
        fed = enlarged_table(table, added, vectors)
        stored_runs, fed_runs, make_runs = [], [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            session.run(None, {"input_ids": ids})
            t1 = time.perf_counter()
            session.run(None, {"input_ids": ids, TOKEN_EMBEDDING_INPUT: fed})
            t2 = time.perf_counter()
            enlarged_table(table, added, vectors)
            t3 = time.perf_counter()
            stored_runs.append(t1 - t0)
            fed_runs.append(t2 - t1)
            make_runs.append(t3 - t2)
    stored, fed_ms = statistics.median(stored_runs) * 1e3, statistics.median(fed_runs) * 1e3
    print(f"text encoder, batch 2, stored table: {stored:.1f} ms (median of {args.repeats})")
    print(f"text encoder, batch 2, fed table:    {fed_ms:.1f} ms ({fed_ms / stored:.2f}x)")
    print(
        f"enlarged_table ({table.shape[0] + 2} x {table.shape[1]}): "
        f"{statistics.median(make_runs) * 1e3:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
