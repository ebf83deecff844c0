#!/bin/bash

# Parameters
#SBATCH --account=seed-project
#SBATCH --array=0-2%2
#SBATCH --constraint='a100&ib'
#SBATCH --cpus-per-task=10
#SBATCH --dependency=afterok:1000
#SBATCH --error=$SEEDRUN_HOME/submitit/slurm/golden/$SUBMISSION/%A_%a/%A_%a_0_log.err
#SBATCH --exclude='node[01-03]'
#SBATCH --gpus-per-node=8
#SBATCH --job-name=seedrun-golden-distill
#SBATCH --mail-type=END
#SBATCH --mem=480GB
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --open-mode=append
#SBATCH --output=$SEEDRUN_HOME/submitit/slurm/golden/$SUBMISSION/%A_%a/%A_%a_0_log.out
#SBATCH --partition=gpu
#SBATCH --qos=high
#SBATCH --requeue
#SBATCH --signal=USR2@300
#SBATCH --time=1440
#SBATCH --wckey=submitit

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output $SEEDRUN_HOME/submitit/slurm/golden/$SUBMISSION/%A_%a/%A_%a_%t_log.out --error $SEEDRUN_HOME/submitit/slurm/golden/$SUBMISSION/%A_%a/%A_%a_%t_log.err --kill-on-bad-exit=1 $PYTHON -u -m submitit.core._submit $SEEDRUN_HOME/submitit/slurm/golden/$SUBMISSION/%j
