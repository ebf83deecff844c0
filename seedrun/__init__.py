"""seedrun: SEED self-supervised distillation studies as sweeps, on a laptop or a Slurm cluster."""

__version__ = "0.1.0"
