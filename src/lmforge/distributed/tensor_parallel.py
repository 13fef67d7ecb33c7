"""Tensor and sequence parallelism (Megatron-LM) with DTensor `parallelize_module`.

Inside each block, q/k/v and the MLP's input projections are split column-wise (each rank holds
whole attention heads and a slice of the hidden units), and the output projections row-wise, so a
block needs one reduction in attention and one in the MLP. Between them the activations are
sharded on the sequence dimension (sequence parallel): norms and residual adds run on T/tp
positions, and the reductions become reduce-scatters. Attention and the MLP gather the full
sequence on entry, so rotary cos/sin, computed for every position, line up with their inputs.
The vocabulary is split too: the embedding row-wise, the output head column-wise, and the loss
is computed on vocabulary-sharded logits (`loss_parallel`) without ever gathering them.
"""

from __future__ import annotations

from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.positions import LearnedPositions
from lmforge.model.transformer import Transformer


def check_tensor_parallel(config: ModelConfig, tp: int, context_length: int) -> None:
    """Each rank must hold whole heads, whole key/value groups and an equal share of every split dim."""
    if tp == 1:
        return
    if config.attention == "mla" or config.n_experts:
        kind = "multi-head latent attention" if config.attention == "mla" else "mixture-of-experts"
        raise LmforgeError(f"--parallel.tp {tp}: tensor parallel supports dense multi-head attention models, not {kind}; "
                           "use --parallel.dp_shard instead")
    shares = {"n_heads": config.n_heads, "n_kv_heads": config.n_kv_heads, "d_ff": config.d_ff,
              "vocab_size": config.vocab_size, "context length": context_length}
    for name, value in shares.items():
        if value % tp:
            raise LmforgeError(f"--parallel.tp {tp} does not divide the model's {name} ({value}); choose tp that divides it")


def _block_plan(config: ModelConfig) -> dict:
    """Column-then-row splits for attention and MLP; norms on sequence shards in between. The
    attention input is gathered on the sequence dim so every rank sees all positions."""
    plan = {
        "attention_norm": SequenceParallel(),
        # attention(x, rope, cache, visible): x is gathered; the rotary (cos, sin) pair and the mask are already whole
        "attention": PrepareModuleInput(input_layouts=(Shard(1), None, None, None),
                                        desired_input_layouts=(Replicate(), None, None, None)),
        "attention.q_proj": ColwiseParallel(),
        "attention.k_proj": ColwiseParallel(),
        "attention.v_proj": ColwiseParallel(),
        "attention.o_proj": RowwiseParallel(output_layouts=Shard(1)),
        "ffn_norm": SequenceParallel(),
        "ffn": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
        "ffn.gate_proj": ColwiseParallel(),
        "ffn.up_proj": ColwiseParallel(),
        "ffn.down_proj": RowwiseParallel(output_layouts=Shard(1)),
    }
    if config.mlp == "gelu":  # GELU MLP: up then down
        del plan["ffn.gate_proj"]
    if config.sandwich_norm:  # on the branch outputs, local sequence shards like the residual they join
        plan["post_attention_norm"] = SequenceParallel(use_local_output=True)
        plan["post_ffn_norm"] = SequenceParallel(use_local_output=True)
    if config.qk_norm:  # [batch, heads, time, head_dim]: this rank's heads are a shard of dim 1
        plan["attention.q_norm"] = SequenceParallel(sequence_dim=1, use_local_output=True)
        plan["attention.k_norm"] = SequenceParallel(sequence_dim=1, use_local_output=True)
    return plan


def apply_tensor_parallel(model: Transformer, mesh: DeviceMesh) -> None:
    """Shard `model` in place over the 1-D `mesh`; its output becomes vocabulary-sharded logits
    (a DTensor) for `loss_parallel`."""
    learned_positions = isinstance(model.positions, LearnedPositions)
    plan = {
        # Learned positions are added to the whole sequence, then the sum is cut into sequence shards;
        # with rotary positions the embedding's reduction can scatter the sequence straight away.
        "token_embedding": RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate() if learned_positions else Shard(1)),
        "norm": SequenceParallel(),
        "lm_head": ColwiseParallel(input_layouts=Shard(1), output_layouts=Shard(-1), use_local_output=False),
    }
    if learned_positions:
        plan["positions.embedding"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate())
        plan["positions"] = PrepareModuleOutput(output_layouts=(Replicate(), None), desired_output_layouts=(Shard(1), None))
    parallelize_module(model, mesh, plan)
    for block in model.blocks:
        parallelize_module(block, mesh, _block_plan(model.config))
    model.tie_weights()  # embedding and head are both split by vocabulary row, so a tie survives
