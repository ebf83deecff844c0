#!/bin/bash

# Parameters
#SBATCH --array=0-1%2
#SBATCH --comment='x y; touch PWNED; $(touch PWNED) `touch PWNED` '"'"'sq'"'"' "dq" #'
#SBATCH --constraint='a100&(ib|roce)*2'
#SBATCH --cpus-per-task=4
#SBATCH --dependency=afterok:1000
#SBATCH --error=$SEEDRUN_HOME/submitit/slurm/x-y-touch-PWNED-touch-PWNED-touch-PWNED-sq-dq/$SUBMISSION/%A_%a/%A_%a_0_log.err
#SBATCH --exclusive
#SBATCH --job-name=seedrun-x-y-touch-PWNED-touch-PWNED-touch-PWNED-sq-dq-distill
#SBATCH --mail-user='x y; touch PWNED; $(touch PWNED) `touch PWNED` '"'"'sq'"'"' "dq" #'
#SBATCH --nice=10
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --open-mode=append
#SBATCH --output=$SEEDRUN_HOME/submitit/slurm/x-y-touch-PWNED-touch-PWNED-touch-PWNED-sq-dq/$SUBMISSION/%A_%a/%A_%a_0_log.out
#SBATCH --partition=gpu,debug
#SBATCH --requeue
#SBATCH --signal=USR2@120
#SBATCH --time=60
#SBATCH --wckey=submitit

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output $SEEDRUN_HOME/submitit/slurm/x-y-touch-PWNED-touch-PWNED-touch-PWNED-sq-dq/$SUBMISSION/%A_%a/%A_%a_%t_log.out --error $SEEDRUN_HOME/submitit/slurm/x-y-touch-PWNED-touch-PWNED-touch-PWNED-sq-dq/$SUBMISSION/%A_%a/%A_%a_%t_log.err --kill-on-bad-exit=1 $PYTHON -u -m submitit.core._submit $SEEDRUN_HOME/submitit/slurm/x-y-touch-PWNED-touch-PWNED-touch-PWNED-sq-dq/$SUBMISSION/%j
