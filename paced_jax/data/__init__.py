"""Problem sources, tokenisation, packing, reference responses and the Grain frontier pipeline.

  pool = load_pool(cfg.data)                          # len(pool), pool[i] -> Problem
  tok = load_tokenizer(cfg.data.tokenizer)
  refs = build_references(pool, cfg.data)             # or teacher generate_fn + verify
  pipe = FrontierPipeline(pool, tok, cfg.data, seed=cfg.seed, references=refs, mesh=mesh)
  pipe.set_round(0, probs)                            # one probability per pool problem
  batch = next(pipe)
"""

import importlib

from paced_jax.data.schema import Problem

# Imported on first use, so `paced_jax.data.schema` (used by verifiers and the sampler side)
# does not pull in grain, tfds or pyarrow.
_WHERE = {
    "TokenizedPool": "packing", "build_pool": "packing", "pack_rows": "packing",
    "FrontierPipeline": "pipeline", "to_global_batch": "pipeline",
    "uniforms": "pipeline", "ReferenceCache": "references", "build_references": "references",
    "DataError": "sources", "ListSource": "sources", "TfdsSource": "sources",
    "jsonl_source": "sources", "load_pool": "sources", "parquet_source": "sources",
    "write_jsonl": "sources", "CharTokenizer": "tokenizer", "HFTokenizer": "tokenizer",
    "Tokenizer": "tokenizer", "apply_chat_template": "tokenizer", "encode_prompt": "tokenizer",
    "load_tokenizer": "tokenizer",
}


def __getattr__(name):
  if name in _WHERE:
    return getattr(importlib.import_module(f"paced_jax.data.{_WHERE[name]}"), name)
  raise AttributeError(f"module 'paced_jax.data' has no attribute {name!r}")


__all__ = [
    "CharTokenizer", "DataError", "FrontierPipeline", "HFTokenizer", "ListSource", "Problem",
    "ReferenceCache", "TfdsSource", "TokenizedPool", "Tokenizer", "apply_chat_template",
    "build_pool", "build_references", "encode_prompt", "jsonl_source", "load_pool",
    "load_tokenizer", "pack_rows", "parquet_source", "to_global_batch",
    "uniforms", "write_jsonl",
]
