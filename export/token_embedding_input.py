"""Text encoder graphs: the token-embedding table as an overridable input.

Textual inversion grows the text encoder's vocabulary; a graph whose table is a constant
cannot look up the new tokens. This pass renames the table's initializer to
``TOKEN_EMBEDDING_INPUT`` and lists it among the graph inputs too, with a symbolic row
count: ONNX Runtime then uses the stored table unless a call feeds another (an enlarged
copy, only while embeddings are loaded). The table is stored in the external data file,
where the runtime reads it (offset and shape recorded in sdrt.json) without onnx.

The table is found as the one initializer of shape (vocab_size, hidden_size) that a Gather
reads rows of; the pass collects it first, then renames, and reports what it did.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, external_data_helper, helper

from sdrt.adapters.textual_inversion import TOKEN_EMBEDDING_INPUT
from sdrt.errors import ModelFolderError
from sdrt.manifest import TokenEmbedding

_DTYPES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16"}


@dataclass(frozen=True)
class PromotedTable:
    """What ``promote_token_embedding`` did: the initializer it renamed and made an input."""

    initializer: str  # its name in the exported graph
    shape: tuple[int, int]
    dtype: str
    gathers: int  # Gather nodes that read it


def promote_token_embedding(
    model: onnx.ModelProto, vocab_size: int, width: int, data_file: str
) -> PromotedTable:
    """Make the (vocab_size, width) table a graph input named TOKEN_EMBEDDING_INPUT, stored
    in ``data_file`` (beside the graph) when the model is saved; mutates ``model``."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:  # collect
        if node.op_type == "Gather" and node.input and node.input[0] in initializers:
            table = initializers[node.input[0]]
            if tuple(table.dims) == (vocab_size, width):
                readers.setdefault(table.name, []).append(node)
    if len(readers) != 1:
        raise ModelFolderError(
            f"text encoder graph: expected one token-embedding table of shape "
            f"({vocab_size}, {width}) read by a Gather, found {len(readers)}"
        )
    ((name, nodes),) = readers.items()
    table = initializers[name]
    if table.data_type not in _DTYPES:
        raise ModelFolderError(
            f"text encoder graph: the token-embedding table {name!r} is of ONNX type "
            f"{table.data_type}, expected float32 or float16"
        )
    for node in graph.node:  # mutate: every use, not only the Gathers found
        for i, value in enumerate(node.input):
            if value == name:
                node.input[i] = TOKEN_EMBEDDING_INPUT
    table.name = TOKEN_EMBEDDING_INPUT
    if table.data_location != TensorProto.EXTERNAL:
        external_data_helper.set_external_data(table, location=data_file)
    graph.input.append(
        helper.make_tensor_value_info(TOKEN_EMBEDDING_INPUT, table.data_type, ["vocabulary", width])
    )
    return PromotedTable(name, (vocab_size, width), _DTYPES[table.data_type], len(nodes))


def token_embedding_record(onnx_file: Path, folder_name: str) -> TokenEmbedding:
    """Where the saved graph keeps its table: the manifest's ``token_embedding`` entry."""
    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    (table,) = [t for t in graph.initializer if t.name == TOKEN_EMBEDDING_INPUT]
    info = {entry.key: entry.value for entry in table.external_data}
    return TokenEmbedding(
        input=TOKEN_EMBEDDING_INPUT,
        dtype=_DTYPES[table.data_type],
        shape=tuple(int(d) for d in table.dims),
        file=f"{folder_name}/{info['location']}",
        offset=int(info.get("offset", 0)),
    )
