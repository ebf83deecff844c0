"""Training: the two recipes, each a loop you can read top to bottom, and what they share.

    pretrain     the pre-training recipe (MoCo-v2, SimCLR, SwAV): teachers and student-alone baselines
    distill      the distillation recipe (SEED and the other strategies)
    loop         the shared step bookkeeping: schedule, periodic checkpoints, stop requests, k-NN at the end
    checkpoints  training checkpoints (atomic) and RNG state, for bit-identical resume
    strategies   the one table of distillation strategies: name, loss, state kept, objective (torch-free)
    objectives   how the distillation recipe uses each strategy: one Objective class a strategy
    pretexts     the self-supervised pre-training objectives, by method name
    queue        the FIFO queue of teacher embeddings

Imports torch. May import seedrun.data, seedrun.models, seedrun.losses and seedrun.evaluate.
"""
