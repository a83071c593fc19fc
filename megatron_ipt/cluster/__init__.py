"""The cluster stage: the launcher, the Slurm scripts' policy and their preflight check."""
