# How each kind of job is run: every *_cmd takes Kaldi's `JOB=1:N LOG CMD ...`.
#
# The one line to change: local (this machine) or slurm (a Slurm cluster).
cluster=local

if [ "$cluster" = slurm ]; then
  # Each call is one sbatch job array (--array=1-N); every task asks Slurm for what
  # conf/slurm.yaml says (partition, time, memory, CPUs, extra sbatch options).
  # On a cluster without GPUs, drop --gpu 1.  Multi-GPU / multi-node training:
  # egs/TEMPLATE/utils/slurm_train.sbatch (README, "Running on a cluster").
  export train_cmd="kdst launch --backend slurm --config conf/slurm.yaml"
  export decode_cmd="kdst launch --backend slurm --config conf/slurm.yaml"
  export cuda_cmd="kdst launch --backend slurm --config conf/slurm.yaml --gpu 1"
else
  # This machine: jobs run as subprocesses, at most --max-jobs at once.
  export train_cmd="kdst launch --max-jobs 2"
  export decode_cmd="kdst launch --max-jobs 2"
  export cuda_cmd="kdst launch --max-jobs 1 --gpu 1"
fi
