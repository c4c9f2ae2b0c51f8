"""Problem sources, tokenisation, packing, reference responses and the Grain frontier pipeline.

  pool = load_pool(cfg.data)                          # len(pool), pool[i] -> Problem
  tok = load_tokenizer(cfg.data.tokenizer)
  refs = build_references(pool, cfg.data)             # or teacher generate_fn + verify
  pipe = FrontierPipeline(pool, tok, cfg.data, seed=cfg.seed, references=refs, mesh=mesh)
  pipe.set_round(0, probs_N)
  batch = next(pipe)
"""

from paced_jax.data.packing import TokenizedPool, build_pool, pack_rows, pick_bucket
from paced_jax.data.pipeline import FrontierPipeline, to_global_batch, uniforms
from paced_jax.data.references import ReferenceCache, build_references
from paced_jax.data.schema import Problem
from paced_jax.data.sources import (DataError, ListSource, TfdsSource, jsonl_source, load_pool,
                                    parquet_source, write_jsonl)
from paced_jax.data.tokenizer import (CharTokenizer, HFTokenizer, Tokenizer, apply_chat_template,
                                      encode_prompt, load_tokenizer)

__all__ = [
    "CharTokenizer", "DataError", "FrontierPipeline", "HFTokenizer", "ListSource", "Problem",
    "ReferenceCache", "TfdsSource", "TokenizedPool", "Tokenizer", "apply_chat_template",
    "build_pool", "build_references", "encode_prompt", "jsonl_source", "load_pool",
    "load_tokenizer", "pack_rows", "parquet_source", "pick_bucket", "to_global_batch",
    "uniforms", "write_jsonl",
]
