"""Parallelism applied from outside to the unchanged `Transformer`, on one `DeviceMesh` with named
dims `pp`, `dp_replicate`, `dp_shard`, `tp`: tensor/sequence parallel, activation checkpointing,
compile, then DDP or FSDP2; pipeline stages cut the same module by layers; distributed
checkpoints with `torch.distributed.checkpoint`. Launched by `torchrun` (or Slurm `srun`)."""
