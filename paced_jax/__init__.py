"""paced_jax: PACED distillation (arXiv 2603.11178) of LLMs in JAX / Flax NNX.

Tensor names carry their shapes (nanodo style: `h_BTD` is [B, T, D]); each suffix letter has
one meaning everywhere:
  B rows of a batch (sequences; the rollout engine's decode slots)
  T sequence / query length          S key / KV-cache length (a sampler's tokens_BS: the
                                       positions it fills after the prompt)
  D model width    F mlp width    V vocabulary    L layers    H head dim
  N query heads    K kv heads     G query heads per kv head (N // K)
  R scored (response) positions of a row: the losses, fused_loss.py, step.py
  C positions in one chunk: the fused loss's chunk of R, blocked attention's block of S
  P prompt length (padded to a prompt bucket)
  W prompts prefilled together (a wave of the rollout engine)
  Q rollouts of the rollout engine, by rollout id (prompts x rollouts per prompt, padded)
  E stop ids (tokens that end a sequence)
  1 an axis of size one
K and N as scalars are the method's notation (the paper's): K rollouts per problem, N problems
in the pool. They are never suffixes (a per-problem array carries none; its docstring says
[N]).
"""

__version__ = "0.1.0"
