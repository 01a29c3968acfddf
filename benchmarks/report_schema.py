"""JSON schema of report.json (draft 2020-12); tests check every report against it."""

from __future__ import annotations

from typing import Any

_NUMBER_OR_NULL = {"type": ["number", "null"]}


_PARITY = {
    "type": "object",
    "required": ["reference", "psnr_db", "max_abs_diff", "identical"],
    "properties": {
        "reference": {"type": "string"},
        "psnr_db": _NUMBER_OR_NULL,
        "max_abs_diff": {"type": "number", "minimum": 0},
        "identical": {"type": "boolean"},
    },
}

_STATS = {
    "type": "object",
    "required": ["median", "p90", "min", "max", "count"],
    "properties": {
        "median": {"type": "number"},
        "p90": {"type": "number"},
        "min": {"type": "number"},
        "max": {"type": "number"},
        "count": {"type": "integer", "minimum": 1},
    },
}

_SIZE_RESULT = {
    "type": "object",
    "required": [
        "size",
        "height",
        "width",
        "runs",
        "unet_calls_per_run",
        "stages",
        "images_per_s",
        "other_fraction",
        "raw",
    ],
    "properties": {
        "size": {"type": "string", "pattern": "^[0-9]+x[0-9]+$"},
        "height": {"type": "integer"},
        "width": {"type": "integer"},
        "runs": {"type": "integer", "minimum": 1},
        "unet_calls_per_run": {"type": "integer", "minimum": 0},
        "stages": {
            "type": "object",
            "required": [
                "text_encoder_s",
                "unet_s",
                "vae_decode_s",
                "other_s",
                "end_to_end_s",
            ],
            "additionalProperties": _STATS,
        },
        "images_per_s": {"type": "number", "exclusiveMinimum": 0},
        "other_fraction": {"type": "number"},
        "roofline": {
            "type": "object",
            "required": ["achieved_flops_per_s", "fraction_of_peak"],
            "properties": {
                "achieved_flops_per_s": {"type": "number"},
                "fraction_of_peak": {"type": "number"},
            },
        },
        "parity": _PARITY,
        # a fast-mode contender's image against exact sdrt's (benchmarks/fast_modes.py)
        "versus_exact": _PARITY,
        "image": {"type": "string"},
        "raw": {"type": "object", "additionalProperties": {"type": "array"}},
    },
}

_CONTENDER = {
    "type": "object",
    "required": ["name", "status", "settings", "results", "peak_rss_bytes", "log"],
    "properties": {
        "name": {"type": "string"},
        "status": {"enum": ["ok", "failed", "unavailable"]},
        "error": {"type": "string"},
        "failed_stage": {"type": "string"},
        "versions": {"type": "object", "additionalProperties": {"type": "string"}},
        "cold_start": {
            "type": "object",
            "required": [
                "import_s",
                "load_to_ready_s",
                "process_start_to_first_image_s",
                "load_settings",
            ],
            "properties": {
                "import_s": {"type": "number"},
                "load_to_ready_s": {"type": "number"},
                "process_start_to_first_image_s": _NUMBER_OR_NULL,
                "load_settings": {"type": "object"},
            },
        },
        # sdrt's ORT contenders: a load-only process that optimises every graph at load
        "load_without_saved_graphs": {
            "type": "object",
            "required": ["status", "log"],
            "properties": {
                "status": {"enum": ["ok", "failed"]},
                "import_s": {"type": "number"},
                "load_to_ready_s": {"type": "number"},
                "process_start_to_ready_s": {"type": "number"},
                "settings": {"type": "object"},
                "error": {"type": "string"},
                "log": {"type": "string"},
            },
            "if": {"properties": {"status": {"const": "ok"}}},
            "then": {"required": ["import_s", "load_to_ready_s", "settings"]},
            "else": {"required": ["error"]},
        },
        "installed": {
            "type": "object",
            "required": ["bytes", "distributions"],
            "properties": {
                "bytes": {"type": "integer", "minimum": 0},
                "distributions": {"type": "object", "additionalProperties": {"type": "integer"}},
            },
        },
        "peak_rss_bytes": {"type": ["integer", "null"]},
        "settings": {"type": "object"},
        "log": {"type": "string"},
        "results": {"type": "array", "items": _SIZE_RESULT},
    },
    "allOf": [
        {  # a failed contender says why
            "if": {"properties": {"status": {"enum": ["failed", "unavailable"]}}},
            "then": {"required": ["error", "failed_stage"]},
        }
    ],
}

REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "sdrt bench report",
    "type": "object",
    "required": [
        "schema_version",
        "started",
        "finished",
        "command",
        "settings",
        "verdict_minimum",
        "round_order",
        "machine",
        "versions",
        "model",
        "roofline",
        "contenders",
        "scheduler_bench",
        "charts",
    ],
    "properties": {
        "schema_version": {"const": 2},
        "started": {"type": "string"},
        "finished": {"type": "string"},
        "command": {"type": "string"},
        "settings": {
            "type": "object",
            "required": [
                "backends",
                "sizes",
                "steps",
                "batch",
                "guidance",
                "scheduler",
                "runs",
                "warmup",
                "threads",
                "precision",
                "seed",
                "prompts",
                "negative_prompt",
                "negative_prompts",
            ],
        },
        "verdict_minimum": {
            "type": "object",
            "required": ["runs", "warmup"],
            "properties": {"runs": {"type": "integer"}, "warmup": {"type": "integer"}},
        },
        "round_order": {
            "type": "object",
            "required": ["method", "rounds"],
            "properties": {
                "method": {"type": "string"},
                "rounds": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["size", "run", "order", "peak_sampled"],
                        "properties": {
                            "size": {"type": "string"},
                            "run": {"type": "integer", "minimum": 0},
                            "order": {"type": "array", "items": {"type": "string"}},
                            "peak_sampled": {"type": "boolean"},
                        },
                    },
                },
            },
        },
        "machine": {
            "type": "object",
            "required": ["cpu_model", "logical_cpus", "threads", "memory_bytes"],
        },
        "versions": {"type": "object", "additionalProperties": {"type": "string"}},
        "model": {"type": "object", "required": ["source", "source_dir", "built_dir"]},
        "roofline": {
            "type": "object",
            "required": ["status", "unet_batch", "flops_per_unet_call"],
            "properties": {
                "status": {"enum": ["ok", "failed", "skipped"]},
                "reason": {"type": "string"},
                "flops_per_unet_call": {
                    "type": "object",
                    "additionalProperties": {"type": "integer"},
                },
                "peak": {
                    "type": "object",
                    "required": ["peak_flops_per_s", "matmul_size", "threads"],
                },
            },
            "allOf": [
                {  # measured: the peak; skipped (--peak-samples 0): why
                    "if": {"properties": {"status": {"const": "ok"}}},
                    "then": {"required": ["peak"]},
                },
                {
                    "if": {"properties": {"status": {"const": "skipped"}}},
                    "then": {"required": ["reason"], "not": {"required": ["peak"]}},
                },
            ],
        },
        "contenders": {"type": "array", "minItems": 1, "items": _CONTENDER},
        "scheduler_bench": {
            "type": "object",
            "required": ["status", "rows"],
            "properties": {
                "status": {"enum": ["ok", "failed"]},
                "rows": {"type": "array", "items": {"type": "object"}},
            },
        },
        "charts": {"type": "array", "items": {"type": "string"}},
    },
}
