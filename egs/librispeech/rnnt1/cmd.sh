# How each kind of job is run: every *_cmd takes Kaldi's `JOB=1:N LOG CMD ...`.
#
# Local machine (the default): jobs run as subprocesses, at most --max-jobs at once.
export train_cmd="kdst launch --max-jobs 2"
export decode_cmd="kdst launch --max-jobs 2"
export cuda_cmd="kdst launch --max-jobs 1 --gpu 1"

# A Slurm cluster: kdst's own Slurm backend comes with a later release.  Until
# then Kaldi's slurm.pl (or queue.pl for SGE) works as it is, since it takes
# the same `JOB=1:N LOG CMD` arguments, e.g.
#   export train_cmd="slurm.pl --config conf/slurm.conf"
#   export cuda_cmd="slurm.pl --config conf/slurm.conf --gpu 1"
